package authority

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// statementLabel separates admin statements from request authorities: the
// same identity key may sign both, and neither may pass for the other.
const statementLabel = "tkeyless admin statement v1\x00"

// Statement is something an admin vouches for other than a signing request:
// a key ceremony, a change of a key's state. Kind names what it is; Body is
// its canonical encoding, chosen by the caller, which the signature covers.
// Members check statements on their own, so no node, not even the one an
// operator talked to, can start a ceremony or flip a key's state by itself.
//
// A statement travels in the same wire format as a request authority.
type Statement struct {
	Kind string
	Body []byte
}

func statementMessage(st Statement, ts int64, id [16]byte) []byte {
	body := sha256.Sum256(st.Body)
	m := make([]byte, 0, len(statementLabel)+2+len(st.Kind)+len(body)+8+16)
	m = append(m, statementLabel...)
	m = binary.BigEndian.AppendUint16(m, uint16(len(st.Kind)))
	m = append(m, st.Kind...)
	m = append(m, body[:]...)
	m = binary.BigEndian.AppendUint64(m, uint64(ts))
	return append(m, id[:]...)
}

// SignStatement makes the authority for one statement. Only an admin
// identity's statements verify.
func (s *Signer) SignStatement(st Statement) ([]byte, error) {
	if st.Kind == "" || len(st.Kind) > 255 {
		return nil, errors.New("statement kind must be 1 to 255 bytes")
	}
	a, err := s.make(func(ts int64, id [16]byte) []byte { return statementMessage(st, ts, id) })
	if err != nil {
		return nil, fmt.Errorf("sign %s statement: %w", st.Kind, err)
	}
	return a, nil
}

// Freshness says how VerifyStatement treats a statement's time.
type Freshness int

const (
	// Once is for statements that start something (a ceremony): the
	// statement must be made within the window and is good for one use;
	// VerifyStatement consumes its id.
	Once Freshness = iota
	// Standing is for statements that hold until a newer one replaces them
	// (a key's state, ordered by a version in the body): any age, any
	// number of uses; the certificate must have been valid when the
	// statement was made.
	Standing
)

// VerifyStatement checks that a is an admin identity's signature over st.
func (v *Verifier) VerifyStatement(a []byte, st Statement, fresh Freshness) (Claims, error) {
	d, err := decode(a)
	if err != nil {
		return Claims{}, fmt.Errorf("%s statement: %w", st.Kind, err)
	}
	t := time.UnixMilli(d.ts)
	now := v.now()
	at := now
	if fresh == Standing {
		at = t
	}
	id, cert, err := v.identityIn(d, at)
	if err != nil {
		return Claims{}, fmt.Errorf("%s statement: %w", st.Kind, err)
	}
	if id.Role != pki.RoleAdmin {
		return Claims{}, fmt.Errorf("%s statement: %s %q is not an admin; only an admin identity may make it", st.Kind, id.Role, id.Name)
	}
	if !verifySig(cert.PublicKey, statementMessage(st, d.ts, d.id), d.sig) {
		return Claims{}, fmt.Errorf("%s statement: signature by %q does not cover this %s", st.Kind, id.Name, st.Kind)
	}
	c := Claims{Identity: id, RequestID: d.id, Time: t}
	if fresh == Standing {
		return c, nil
	}
	if err := v.current(t, now); err != nil {
		return Claims{}, fmt.Errorf("%s statement from %q: %w", st.Kind, id.Name, err)
	}
	if err := v.MarkUsed(c); err != nil {
		return Claims{}, fmt.Errorf("%s statement: %w", st.Kind, err)
	}
	return c, nil
}
