package tlsglue

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// MinTicketSecretLen is the shortest ticket secret accepted: 32 bytes, the size of the key it
// derives.
const MinTicketSecretLen = 32

// ticketKeyLabel is the HKDF info prefix. Changing it invalidates every ticket in a fleet, so it
// carries a version.
const ticketKeyLabel = "tkeyless ticket key v2"

// Ticket defaults: a new ticket key every hour, tickets valid for a day.
const (
	DefaultTicketRotation = time.Hour
	DefaultTicketLifetime = 24 * time.Hour
)

// TicketPolicy is how a fleet of edges shares and rotates session ticket keys without a
// coordinator: every edge derives the key of an epoch (Rotation long) from the shared secret
// and the epoch number, so all edges with the same secret and clock agree on the keys, and a
// client resumes on any of them. Tickets older than Lifetime are refused, and keys of epochs
// that can hold no live ticket are dropped.
type TicketPolicy struct {
	Secret   []byte
	Rotation time.Duration // default DefaultTicketRotation
	Lifetime time.Duration // default DefaultTicketLifetime
}

func (p TicketPolicy) withDefaults() TicketPolicy {
	if p.Rotation <= 0 {
		p.Rotation = DefaultTicketRotation
	}
	if p.Lifetime <= 0 {
		p.Lifetime = DefaultTicketLifetime
	}
	return p
}

// Check reports a policy that cannot work.
func (p TicketPolicy) Check() error {
	if len(p.Secret) < MinTicketSecretLen {
		return fmt.Errorf("ticket secret is %d bytes; it needs at least %d", len(p.Secret), MinTicketSecretLen)
	}
	if p.Rotation < 0 || p.Lifetime < 0 {
		return errors.New("ticket rotation and lifetime must be positive")
	}
	return nil
}

// TicketKeys returns the session ticket keys for tls.Config.SetSessionTicketKeys at time now,
// derived with HKDF-SHA256 from the fleet's secret and the epoch number: the current epoch's key
// first (it encrypts new tickets), then the previous epochs' keys back as far as a ticket
// within Lifetime may have been issued (they only decrypt). It returns nil if the secret is
// shorter than MinTicketSecretLen.
func TicketKeys(p TicketPolicy, now time.Time) [][32]byte {
	p = p.withDefaults()
	if len(p.Secret) < MinTicketSecretLen {
		return nil
	}
	epoch := now.UnixNano() / int64(p.Rotation)
	// A ticket issued just before the current epoch began is still valid for Lifetime.
	back := int64((p.Lifetime + p.Rotation - 1) / p.Rotation)
	keys := make([][32]byte, 0, back+1)
	for e := epoch; e >= epoch-back; e-- {
		info := binary.BigEndian.AppendUint64([]byte(ticketKeyLabel+"\x00"), uint64(e))
		k, err := hkdf.Key(sha256.New, p.Secret, nil, string(info), 32)
		if err != nil {
			// Only in FIPS 140-only mode with a short secret, which the length check excludes.
			return nil
		}
		var key [32]byte
		copy(key[:], k)
		keys = append(keys, key)
	}
	return keys
}

// issuedAtTag marks the issue time tkeyless adds to a session's state, so a ticket's age is
// checked on every edge, whatever the client claims.
const issuedAtTag = "tkeyless-issued:"

// UseTicketPolicy makes cfg issue and accept tickets under p: keys derived per epoch (see
// TicketKeys), set now and on every epoch boundary until ctx ends, and tickets older than
// p.Lifetime refused (the client then does a full handshake). Key material is never logged.
//
// A session lives p.Lifetime from its full handshake, however often it resumes. crypto/tls
// re-issues a ticket on every resumption and carries nothing of tkeyless's over (TLS 1.2 keeps
// its own creation time but drops SessionState.Extra, TLS 1.3 keeps neither), so the issue time
// of the session being resumed is handed from UnwrapSession to WrapSession within each
// connection, through a per-connection copy of cfg that cfg.GetConfigForClient returns. A
// GetConfigForClient already set is called first; replacing the one set here afterwards makes
// every ticket re-issued on resumption unusable (the next connection is a full handshake), never
// longer-lived.
//
// Ticket ages are measured on cfg.Time (default time.Now), the clock crypto/tls itself ages
// tickets and verifies certificates by.
func UseTicketPolicy(ctx context.Context, cfg *tls.Config, p TicketPolicy) error {
	if err := p.Check(); err != nil {
		return err
	}
	p = p.withDefaults()
	ti := &ticketIssuer{cfg: cfg, lifetime: p.Lifetime}
	cfg.SetSessionTicketKeys(TicketKeys(p, ti.now()))
	// These two serve handshakes that bypass the per-connection copy (only if someone replaced
	// GetConfigForClient): such a handshake cannot know the age of the session it resumes.
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		var issued time.Time
		if !cs.DidResume {
			issued = ti.now()
		}
		return ti.wrap(cs, ss, issued)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, _, err := ti.unwrap(identity, cs)
		return ss, err
	}
	prev := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		base := cfg
		if prev != nil {
			c, err := prev(hello)
			if err != nil {
				return nil, err
			}
			if c != nil {
				base = c
			}
		}
		return ti.forConnection(base), nil
	}
	go func() {
		for {
			// Epochs follow the wall clock; cfg.Time differs from it only in tests.
			next := time.Now().Truncate(p.Rotation).Add(p.Rotation)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
				cfg.SetSessionTicketKeys(TicketKeys(p, ti.now()))
			}
		}
	}()
	return nil
}

// ticketIssuer wraps and unwraps the tickets of one tls.Config under a ticket lifetime.
type ticketIssuer struct {
	cfg      *tls.Config // its ticket keys encrypt and decrypt; its Time is the clock
	lifetime time.Duration
}

func (ti *ticketIssuer) now() time.Time {
	if ti.cfg.Time != nil {
		return ti.cfg.Time()
	}
	return time.Now()
}

// forConnection returns a copy of base for one connection whose WrapSession stamps a ticket
// re-issued on resumption with the issue time of the session resumed, which its UnwrapSession
// recorded earlier in the same handshake.
func (ti *ticketIssuer) forConnection(base *tls.Config) *tls.Config {
	c := base.Clone()
	// Set by UnwrapSession, read by WrapSession, both on the handshake's goroutine. TLS 1.3
	// may unwrap several identities; the one resumed is the last accepted, since crypto/tls
	// stops at the first that passes its own checks.
	var resumed time.Time
	c.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, issued, err := ti.unwrap(identity, cs)
		if ss != nil {
			resumed = issued
		}
		return ss, err
	}
	c.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		issued := ti.now()
		if cs.DidResume {
			issued = resumed
		}
		return ti.wrap(cs, ss, issued)
	}
	return c
}

// wrap encrypts ss stamped with issued, the time of the session's full handshake. A zero
// issued (a resumption whose origin is unknown) leaves it unstamped, and unwrap refuses it.
func (ti *ticketIssuer) wrap(cs tls.ConnectionState, ss *tls.SessionState, issued time.Time) ([]byte, error) {
	// crypto/tls fills Extra only with what WrapSession put there; drop any stale stamp all
	// the same, so that the one added here is the only one.
	ss.Extra = slices.DeleteFunc(ss.Extra, isIssuedAt)
	if !issued.IsZero() {
		ss.Extra = append(ss.Extra, binary.BigEndian.AppendUint64([]byte(issuedAtTag), uint64(issued.Unix())))
	}
	return ti.cfg.EncryptTicket(cs, ss)
}

// unwrap decrypts a ticket and returns its session and issue time if it is ours and younger
// than the lifetime; otherwise nil, and crypto/tls does a full handshake.
func (ti *ticketIssuer) unwrap(identity []byte, cs tls.ConnectionState) (*tls.SessionState, time.Time, error) {
	ss, err := ti.cfg.DecryptTicket(identity, cs)
	if err != nil || ss == nil {
		return nil, time.Time{}, err
	}
	if t := issuedAt(ss); !t.IsZero() && ti.now().Sub(t) <= ti.lifetime {
		return ss, t, nil
	}
	// Too old, or not stamped: no resumption.
	return nil, time.Time{}, nil
}

func isIssuedAt(x []byte) bool {
	return len(x) == len(issuedAtTag)+8 && string(x[:len(issuedAtTag)]) == issuedAtTag
}

// issuedAt is the issue time tkeyless recorded in a session, or zero.
func issuedAt(ss *tls.SessionState) time.Time {
	for _, x := range ss.Extra {
		if isIssuedAt(x) {
			return time.Unix(int64(binary.BigEndian.Uint64(x[len(issuedAtTag):])), 0)
		}
	}
	return time.Time{}
}

// LoadTicketSecret reads a ticket secret file: its bytes, as they are, are the secret (a file
// made by `head -c 32 /dev/urandom` or `openssl rand -hex 32` both work). Copy the same file to
// every edge of a fleet.
func LoadTicketSecret(path string) ([]byte, error) {
	secret, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ticket secret: %w", err)
	}
	if len(secret) < MinTicketSecretLen {
		return nil, fmt.Errorf("load ticket secret: file %s holds %d bytes; it needs at least %d (make one with: head -c 32 /dev/urandom > %s)",
			path, len(secret), MinTicketSecretLen, path)
	}
	return secret, nil
}
