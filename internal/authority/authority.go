// Package authority is tkeyless's end-to-end request authority: the edge
// signs each signing request (key, operation, digest, request id, time)
// with its own identity key, and every quorum member checks that signature
// before it joins the session. The coordinator only forwards it, so a
// compromised signer cannot invent a digest or change one.
//
// The authority travels as an extra item (tag 0xC0) of the keyless
// request, which stock gokeyless servers ignore, and inside the peer
// protocol's sign request.
//
// Wire format, version 1 (all integers big-endian):
//
//	version    uint8 = 1
//	time       int64, Unix milliseconds when the edge signed
//	request id [16]byte, random
//	cert       uint16 length + DER of the edge's identity certificate
//	signature  uint16 length + the identity key's signature over
//	           SHA-256("tkeyless request authority v1\x00" || op || ski ||
//	                   uint8 len(digest) || digest || time || request id)
//
// The signature is ECDSA (ASN.1) or Ed25519, as the identity key is.
package authority

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/tkeyless/tkeyless/internal/p256"
	"github.com/tkeyless/tkeyless/internal/pki"
)

const (
	version = 1
	label   = "tkeyless request authority v1\x00"
	// maxLen bounds a decoded authority: a certificate and a signature.
	maxLen = 8 << 10
)

// Request is what an authority vouches for.
type Request struct {
	Op     byte     // the keyless opcode (ECDSA-SHA256/384/512)
	SKI    [20]byte // the key
	Digest []byte
}

// Claims is what a verified authority says.
type Claims struct {
	Identity  pki.Identity
	RequestID [16]byte
	Time      time.Time
}

// RequestIDString is the request id in hex, for logs.
func (c Claims) RequestIDString() string { return hex.EncodeToString(c.RequestID[:]) }

// Signer makes authorities for one edge identity.
type Signer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	Now  func() time.Time // defaults to time.Now
}

// Sign makes the authority for one request.
func (s *Signer) Sign(req Request) ([]byte, error) {
	a, err := s.make(func(ts int64, id [16]byte) []byte { return signedMessage(req, ts, id) })
	if err != nil {
		return nil, fmt.Errorf("sign request authority: %w", err)
	}
	return a, nil
}

// make signs message(time, random id) with the identity key and encodes
// the result in the wire format; request authorities and admin statements
// differ only in the message.
func (s *Signer) make(message func(ts int64, id [16]byte) []byte) ([]byte, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	ts := now().UnixMilli()
	msg := message(ts, id)
	var sig []byte
	var err error
	if _, ok := s.Key.Public().(ed25519.PublicKey); ok {
		sig, err = s.Key.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		d := sha256.Sum256(msg)
		sig, err = s.Key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddUint8(version)
	b.AddUint64(uint64(ts))
	b.AddBytes(id[:])
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.Cert.Raw) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sig) })
	return b.Bytes()
}

func signedMessage(req Request, ts int64, id [16]byte) []byte {
	m := make([]byte, 0, len(label)+1+20+1+len(req.Digest)+8+16)
	m = append(m, label...)
	m = append(m, req.Op)
	m = append(m, req.SKI[:]...)
	m = append(m, byte(len(req.Digest)))
	m = append(m, req.Digest...)
	m = binary.BigEndian.AppendUint64(m, uint64(ts))
	return append(m, id[:]...)
}

// decoded is a parsed, not yet verified, authority.
type decoded struct {
	ts   int64
	id   [16]byte
	cert []byte
	sig  []byte
}

func decode(a []byte) (*decoded, error) {
	if len(a) == 0 {
		return nil, errors.New("no request authority")
	}
	if len(a) > maxLen {
		return nil, fmt.Errorf("request authority is %d bytes, over %d", len(a), maxLen)
	}
	s := cryptobyte.String(a)
	var v uint8
	var ts uint64
	var id, cert, sig []byte
	if !s.ReadUint8(&v) {
		return nil, errors.New("request authority: truncated")
	}
	if v != version {
		return nil, fmt.Errorf("request authority version %d not supported (want %d)", v, version)
	}
	if !s.ReadUint64(&ts) || !s.ReadBytes(&id, 16) ||
		!s.ReadUint16LengthPrefixed((*cryptobyte.String)(&cert)) ||
		!s.ReadUint16LengthPrefixed((*cryptobyte.String)(&sig)) {
		return nil, errors.New("request authority: truncated")
	}
	if !s.Empty() {
		return nil, errors.New("request authority: trailing bytes")
	}
	d := &decoded{ts: int64(ts), cert: cert, sig: sig}
	copy(d.id[:], id)
	return d, nil
}

// Verifier checks authorities on a signer. One per node: it remembers the
// request ids it has seen, so each authority yields at most one signature.
type Verifier struct {
	// Roots is the cluster CA that issues edge identities.
	Roots *x509.CertPool
	// roots, once SetRoots is called, replaces Roots (a reloaded CA).
	roots atomic.Pointer[x509.CertPool]
	// Window is how far an authority's time may be from this node's clock
	// (default 30 s); it bounds clock skew plus the handshake deadline, and
	// how long request ids are remembered.
	Window time.Duration
	Now    func() time.Time

	// chains remembers certificates already verified against the roots
	// (certcache.go): every member checks the same edge certificate for
	// every request.
	chains chainCache

	mu        sync.Mutex
	used      map[[16]byte]time.Time // request ids that produced a signature, with their time
	lastPrune time.Time
	journal   *os.File  // see journal.go; nil: ids are kept in memory only
	notBefore time.Time // authorities made earlier are refused (journal lost)
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) window() time.Duration {
	if v.Window > 0 {
		return v.Window
	}
	return 30 * time.Second
}

// Verify checks that a vouches for req: a valid signature by an edge or
// admin identity of this cluster, made within the window, with a request
// id not used before. It does not consume the id: call MarkUsed once the
// signature has been produced.
func (v *Verifier) Verify(a []byte, req Request) (Claims, error) {
	d, err := decode(a)
	if err != nil {
		return Claims{}, err
	}
	now := v.now()
	id, cert, err := v.identityIn(d, now)
	if err != nil {
		return Claims{}, fmt.Errorf("request authority: %w", err)
	}
	if id.Role != pki.RoleEdge && id.Role != pki.RoleAdmin {
		return Claims{}, fmt.Errorf("request authority: %s %q may not request signatures", id.Role, id.Name)
	}
	if !verifySig(cert.PublicKey, signedMessage(req, d.ts, d.id), d.sig) {
		return Claims{}, fmt.Errorf("request authority: signature by %q does not cover this request (key, operation or digest differ)", id.Name)
	}
	t := time.UnixMilli(d.ts)
	if err := v.current(t, now); err != nil {
		return Claims{}, fmt.Errorf("request authority from %q: %w", id.Name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.used[d.id]; ok {
		return Claims{}, fmt.Errorf("request authority from %q: %x: %w", id.Name, d.id, ErrReplay)
	}
	return Claims{Identity: id, RequestID: d.id, Time: t}, nil
}

// SetRoots replaces the cluster CA while the verifier is in use (a signer
// reloading its configuration); Roots must not be written once Verify may
// run.
func (v *Verifier) SetRoots(p *x509.CertPool) { v.roots.Store(p) }

func (v *Verifier) currentRoots() *x509.CertPool {
	if p := v.roots.Load(); p != nil {
		return p
	}
	return v.Roots
}

// identityIn returns the identity whose certificate d carries, checked to
// be issued by the cluster CA and valid at time at.
func (v *Verifier) identityIn(d *decoded, at time.Time) (pki.Identity, *x509.Certificate, error) {
	roots := v.currentRoots()
	if id, cert, ok := v.chains.get(roots, d.cert, at); ok {
		return id, cert, nil
	}
	cert, err := x509.ParseCertificate(d.cert)
	if err != nil {
		return pki.Identity{}, nil, fmt.Errorf("certificate: %w", err)
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return pki.Identity{}, nil, fmt.Errorf("certificate not issued by the cluster CA: %w", err)
	}
	id, err := pki.IdentityOf(cert)
	if err != nil {
		return pki.Identity{}, nil, err
	}
	v.chains.put(roots, d.cert, id, cert, chains)
	return id, cert, nil
}

// current checks that something made at t may still be acted on at now:
// within the window, and not before the node could vouch for its ids.
func (v *Verifier) current(t, now time.Time) error {
	if skew := now.Sub(t); skew > v.window() || skew < -v.window() {
		return fmt.Errorf("made %s ago, outside the %s window", skew.Truncate(time.Millisecond), v.window())
	}
	return v.admissible(t)
}

// ErrReplay is returned for a request id already used.
var ErrReplay = errors.New("request id already used: replay")

// MarkUsed records that a request id is spent: a later Verify of the same
// authority fails as a replay, here and, with a journal (Open), after a
// restart. It returns ErrReplay if the id was already used (two sessions
// raced with one authority), or the journal's error if the id could not be
// recorded: without the record a restart could forget it, so the caller
// must not sign on it.
func (v *Verifier) MarkUsed(c Claims) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.used == nil {
		v.used = map[[16]byte]time.Time{}
	}
	if _, ok := v.used[c.RequestID]; ok {
		return fmt.Errorf("request %s from %q: %w", c.RequestIDString(), c.Identity.Name, ErrReplay)
	}
	if err := v.appendLocked(c.RequestID, c.Time); err != nil {
		return fmt.Errorf("record request id %s: %w", c.RequestIDString(), err)
	}
	v.used[c.RequestID] = c.Time
	// Forget ids whose authorities can no longer pass the time check, once
	// per window so the cost stays amortized.
	if now := v.now(); now.Sub(v.lastPrune) > v.window() {
		v.lastPrune = now
		cutoff := now.Add(-2 * v.window())
		for id, t := range v.used {
			if t.Before(cutoff) {
				delete(v.used, id)
			}
		}
	}
	return nil
}

// Release gives back a request id claimed by MarkUsed whose session failed
// before any member's secrets went into it (before round 2), so a retry
// with another quorum can use the same authority. Once a session has
// passed round 1 its authority stays spent, whatever the outcome: every
// attempt a cheating member could learn something from costs an edge one
// request. (The journal keeps the released id; after a restart it counts as
// used, which only costs that one retry.)
func (v *Verifier) Release(c Claims) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.used, c.RequestID)
}

func verifySig(pub any, msg, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return p256.VerifyASN1(k, d[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	default:
		return false
	}
}
