package tss

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// SignSession is one node's part in signing one digest with a cluster key.
// Exactly the quorum's members run one each, with the same digest.
type SignSession struct {
	r      *runner
	end    chan *common.SignatureData
	pub    *ecdsa.PublicKey
	digest []byte
}

// NewSignSession prepares this node's party of a signing session. quorum
// names the Threshold+1 share holders that take part (self among them);
// digest is a SHA-256, SHA-384 or SHA-512 digest, truncated as ECDSA
// prescribes (DigestScalar).
func NewSignSession(share *Share, quorum []string, digest []byte, outbox Outbox) (*SignSession, error) {
	return newSignSession(share, quorum, digest, outbox, implEngine)
}

// signImpl is which party signs: tkeyless's engine (engine.go), or stock
// tss-lib's, which tests and the reference benchmark run beside it.
type signImpl int

const (
	implEngine signImpl = iota
	implTSSLib
)

func newSignSession(share *Share, quorum []string, digest []byte, outbox Outbox, impl signImpl) (*SignSession, error) {
	if err := checkDigestLen(digest); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	s := &SignSession{end: make(chan *common.SignatureData, 1), digest: slices.Clone(digest)}
	r, err := newSignRunner("sign", share, quorum, DigestScalar(digest), outbox, s.end, impl)
	if err != nil {
		return nil, err
	}
	s.r, s.pub = r, share.pub
	return s, nil
}

func checkDigestLen(digest []byte) error {
	switch len(digest) {
	case 28, 32, 48, 64:
		return nil
	}
	return fmt.Errorf("digest is %d bytes; want 28, 32, 48 or 64 (SHA-224/256/384/512)", len(digest))
}

// newSignRunner builds the runner and signing party for share's holder in
// quorum, signing msg. With the engine, msg may be nil: the party then
// stops after round 4 until it is given one (presign.go); tss-lib's party
// needs it from the start.
func newSignRunner(kind string, share *Share, quorum []string, msg *big.Int, outbox Outbox, end chan *common.SignatureData, impl signImpl) (*runner, error) {
	if share == nil {
		return nil, fmt.Errorf("%s: nil share", kind)
	}
	if len(quorum) != share.Quorum() {
		return nil, fmt.Errorf("%s: quorum %v has %d members, key %s needs %d", kind, quorum, len(quorum), share.KeyID(), share.Quorum())
	}
	for _, q := range quorum {
		if !slices.Contains(share.Parties, q) {
			return nil, fmt.Errorf("%s: quorum member %q holds no share of key %s (holders %v)", kind, q, share.KeyID(), share.Parties)
		}
	}
	m, err := newMembers(quorum)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	r, err := newRunner(kind, share.Self, m, share.Threshold, outbox)
	if err != nil {
		return nil, err
	}
	if err := checkQuorumModuli(kind, share, quorum); err != nil {
		return nil, err
	}
	key, err := share.paillierKey()
	if err != nil {
		return nil, fmt.Errorf("%s: own %w", kind, err)
	}
	r.checks.mta = newMtACheck(key)
	if impl == implEngine {
		p, err := newEngineParty(kind, share, m, msg, r.checks.mta, r.out, end)
		if err != nil {
			return nil, err
		}
		r.party = p
		return r, nil
	}
	if msg == nil {
		return nil, fmt.Errorf("%s: tss-lib's party needs the message from the start", kind)
	}
	params := tsslib.NewParameters(curve, tsslib.NewPeerContext(m.sorted), m.byName[share.Self], len(quorum), share.Threshold)
	// The last argument makes tss-lib return M as a full 32-byte value.
	r.party = signing.NewLocalParty(msg, params, share.data, r.out, end, (curve.Params().BitSize+7)/8)
	return r, nil
}

// Deliver hands the session a message from another quorum member. from
// must be the name the transport authenticated. It does not block.
func (s *SignSession) Deliver(from string, broadcast bool, payload []byte) error {
	return s.r.deliver(from, broadcast, payload)
}

// Run drives the session to its end and returns the signature, ASN.1 DER
// encoded, after verifying it against the key's public key: a signature
// that does not verify never leaves the engine.
func (s *SignSession) Run(ctx context.Context) ([]byte, error) {
	data, err := run(ctx, s.r, s.end)
	if err != nil {
		return nil, err
	}
	r, sv := new(big.Int).SetBytes(data.R), new(big.Int).SetBytes(data.S)
	der := encodeSignature(r, sv)
	if !ecdsa.VerifyASN1(s.pub, s.digest, der) {
		return nil, &SessionError{Kind: "sign", Round: 9, Unattributed: true, Err: errors.New("joint signature does not verify against the key's public key")}
	}
	return der, nil
}

// PastRound1 reports whether the session got beyond its first round on this
// node: from then on the node's secrets went into its answers, so the
// request that authorized the session must count as used even if it fails.
func (s *SignSession) PastRound1() bool { return s.r.pastRound1() }

// checkQuorumModuli refuses to sign with a share whose record of another
// quorum member's Paillier or range-proof modulus is not full size (a
// share dealt by an unchecked resharing): see checkModuli.
func checkQuorumModuli(kind string, share *Share, quorum []string) error {
	for i, p := range share.Parties {
		if p == share.Self || !slices.Contains(quorum, p) {
			continue
		}
		var n, nTilde *big.Int
		if i < len(share.data.PaillierPKs) && share.data.PaillierPKs[i] != nil {
			n = share.data.PaillierPKs[i].N
		}
		if i < len(share.data.NTildej) {
			nTilde = share.data.NTildej[i]
		}
		if err := checkModuli(fmt.Sprintf("%s: key %s: member %s", kind, share.KeyID(), p), n, nTilde); err != nil {
			return err
		}
	}
	return nil
}

// encodeSignature writes ECDSA-Sig-Value, as crypto/ecdsa does.
func encodeSignature(r, s *big.Int) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.BytesOrPanic()
}

// Abort ends the session with err (Kind is filled in): for misbehaviour
// the transport detects, such as an equivocating member.
func (s *SignSession) Abort(err *SessionError) { s.r.abort(err) }

// SetStallTimeout makes Run fail, blaming the members it waits for, when
// no message arrives for d. Call it before Run. Zero (the default) waits
// for the context's deadline only.
func (s *SignSession) SetStallTimeout(d time.Duration) { s.r.stall = d }

// SetStallFunc is SetStallTimeout with a bound asked again each time the
// wait for a message starts over, so it can follow the node's load.
func (s *SignSession) SetStallFunc(f func() time.Duration) { s.r.stallFn = f }
