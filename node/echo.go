package node

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/tkeyless/tkeyless/internal/p256"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

// Reliable broadcast for sessions of three or more members.
//
// GG18 assumes a broadcast reaches every member identically. Over
// point-to-point links a member could send different "broadcasts" to
// different peers (equivocate). So every broadcast is signed by its origin
// with its node key, each receiver echoes the hash and the origin's
// signature to the other members, and a broadcast reaches the local party
// only once every other member has echoed the same hash. Two different
// hashes, both signed by the origin, prove the origin equivocated; an echo
// whose signature does not verify blames the echoer.

type broadcastKey struct{ origin, msgType string }

type broadcast struct {
	env      *peerwire.Envelope // held until released; nil once released
	hash     []byte             // what this node received, nil until then
	echoes   map[string][]byte  // echoer → hash it received
	released bool
	// checked lists the origin's signatures this node verified for this
	// broadcast, from the origin or in an echo, each with the certificate
	// and hash it verified under. In a session of three the origin's one
	// signature reaches a member twice (directly and in the other member's
	// echo): the same three bytes strings again need no second check.
	checked []sigCheck
}

// sigCheck is an origin signature verified under cert over hash.
type sigCheck struct{ cert, hash, sig []byte }

// wasChecked reports whether sig was verified under cert over hash for
// this broadcast; s.mu is held. b may be nil.
func (b *broadcast) wasChecked(cert, hash, sig []byte) bool {
	if b == nil {
		return false
	}
	return slices.ContainsFunc(b.checked, func(c sigCheck) bool {
		return bytes.Equal(c.cert, cert) && bytes.Equal(c.hash, hash) && bytes.Equal(c.sig, sig)
	})
}

// deliver hands an accepted envelope to its session's party, through the
// echo check when the session has three or more members.
func (n *Node) deliver(caller pki.Identity, env *peerwire.Envelope) error {
	s, err := n.sessions.accept(caller.Name, env)
	if err != nil {
		return err
	}
	if err := n.takeCarriedEchoes(s, caller, env); err != nil {
		return err
	}
	if !env.Broadcast || !s.echo {
		return s.party.Deliver(env.From, env.Broadcast, env.Payload)
	}
	hash := sha256.Sum256(env.Payload)
	digest := peerwire.BroadcastDigest(env.Session, env.From, env.Type, env.Round, hash[:])
	k := broadcastKey{env.From, env.Type}
	s.mu.Lock()
	checked := s.broadcasts[k].wasChecked(caller.Cert.Raw, hash[:], env.Sig)
	s.mu.Unlock()
	if !checked && !verifyNodeSig(caller.Cert.PublicKey, digest, env.Sig) {
		// Not a conviction: the signature is the sender's alone to make,
		// and nothing here proves it to the others.
		err := fmt.Errorf("session %s: broadcast %s from %s has no valid signature", s.id, env.Type, env.From)
		s.party.Abort(&tss.SessionError{Round: env.Round, Culprits: []string{env.From}, Err: err})
		return err
	}
	echo := peerwire.Echo{Version: peerwire.Version, Session: env.Session, Origin: env.From, Type: env.Type, Round: env.Round,
		Hash: hash[:], Sig: env.Sig, OriginCert: caller.Cert.Raw}
	carried := s.carried(env.Round)
	s.mu.Lock()
	b := s.broadcastFor(k)
	b.hash = hash[:]
	if carried {
		// Released at once; its echoes travel on the next round's
		// envelopes, and this node's next-but-one round waits for them.
		b.released = true
		s.oweLocked(n.cfg.Name, echo)
		s.wakeLocked()
	} else {
		b.env = env
	}
	if !checked {
		b.checked = append(b.checked, sigCheck{caller.Cert.Raw, hash[:], env.Sig})
	}
	conflict := b.conflict()
	s.mu.Unlock()
	if conflict {
		return n.equivocation(s, env.From, env.Type, env.Round)
	}
	if carried {
		return s.party.Deliver(env.From, true, env.Payload)
	}
	n.sendEchoes(s, &echo)
	return n.maybeRelease(s, k)
}

// broadcastFor returns the tracking state of one broadcast; s.mu is held.
func (s *session) broadcastFor(k broadcastKey) *broadcast {
	b, ok := s.broadcasts[k]
	if !ok {
		b = &broadcast{echoes: map[string][]byte{}}
		s.broadcasts[k] = b
	}
	return b
}

// conflict reports whether two of the hashes seen for one broadcast (this
// node's own and the echoes) differ. Each was checked to carry the origin's
// signature, so a difference convicts the origin.
func (b *broadcast) conflict() bool {
	var first []byte
	for _, h := range append(slices.Collect(maps.Values(b.echoes)), b.hash) {
		if h == nil {
			continue
		}
		if first == nil {
			first = h
		} else if !bytes.Equal(first, h) {
			return true
		}
	}
	return false
}

// handleEcho records another member's echo of a broadcast, sent in its
// own call.
func (n *Node) handleEcho(caller pki.Identity, e *peerwire.Echo) error {
	if !peerwire.Supported(e.Version) {
		return fmt.Errorf("echo version %d, want %d to %d", e.Version, peerwire.MinVersion, peerwire.Version)
	}
	s, err := n.sessions.get(e.Session)
	if err != nil {
		return err
	}
	if s.carried(e.Round) {
		return fmt.Errorf("session %s: echo from %s of round %d: this session carries it on the next round's envelopes", s.id, caller.Name, e.Round)
	}
	if err := n.recordEcho(s, caller, e); err != nil {
		return err
	}
	n.metrics.echoes.WithLabelValues("call").Inc()
	return nil
}

// takeCarriedEchoes records the echoes an envelope carries: in a carry
// session, the sender's echoes of the previous round's broadcasts.
func (n *Node) takeCarriedEchoes(s *session, caller pki.Identity, env *peerwire.Envelope) error {
	for i := range env.Echoes {
		e := &env.Echoes[i]
		if !s.carry || e.Session != env.Session || e.Round != env.Round-1 || !s.carried(e.Round) {
			return fmt.Errorf("session %s: %s's round %d envelope carries an echo of round %d, which does not belong there", s.id, caller.Name, env.Round, e.Round)
		}
		if err := n.recordEcho(s, caller, e); err != nil {
			return err
		}
		n.metrics.echoes.WithLabelValues("envelope").Inc()
	}
	return nil
}

// recordEcho records caller's echo of a broadcast of session s, and
// releases the broadcast when it was the last echo it waited for.
func (n *Node) recordEcho(s *session, caller pki.Identity, e *peerwire.Echo) error {
	if !slices.Contains(s.members, caller.Name) || !slices.Contains(s.members, e.Origin) || caller.Name == e.Origin || e.Origin == n.cfg.Name {
		return fmt.Errorf("session %s: echo from %s about %s does not fit members %v", s.id, caller.Name, e.Origin, s.members)
	}
	// Only the protocol's own broadcasts are tracked: the tracking state
	// stays bounded by members × message types, whatever an echoer sends.
	if !s.echo || !tss.IsBroadcastType(string(s.kind), e.Type) || e.Round != tss.RoundOf(e.Type) || len(e.Hash) != sha256.Size {
		return fmt.Errorf("session %s: echo from %s of %s round %d: not a broadcast of this session", s.id, caller.Name, e.Type, e.Round)
	}
	// The echo must carry the origin's own signature over what the echoer
	// says it received; otherwise the echoer is lying. The signature is
	// verified unless this node already verified the very same one, under
	// the same certificate, over the same hash: then the answer is known.
	k := broadcastKey{e.Origin, e.Type}
	s.mu.Lock()
	checked := s.broadcasts[k].wasChecked(e.OriginCert, e.Hash, e.Sig)
	s.mu.Unlock()
	if err := n.checkOriginSig(e, checked); err != nil {
		err = fmt.Errorf("session %s: echo from %s: %w", s.id, caller.Name, err)
		s.party.Abort(&tss.SessionError{Round: e.Round, Culprits: []string{caller.Name}, Convicted: []string{caller.Name}, Err: fmt.Errorf("%w: %w", tss.ErrMisbehaved, err)})
		return err
	}
	s.mu.Lock()
	b := s.broadcastFor(k)
	if _, dup := b.echoes[caller.Name]; dup {
		s.mu.Unlock()
		return fmt.Errorf("session %s: duplicate echo from %s", s.id, caller.Name)
	}
	b.echoes[caller.Name] = e.Hash
	if !checked {
		b.checked = append(b.checked, sigCheck{e.OriginCert, e.Hash, e.Sig})
	}
	conflict := b.conflict()
	s.wakeLocked()
	s.mu.Unlock()
	if conflict {
		return n.equivocation(s, e.Origin, e.Type, e.Round)
	}
	return n.maybeRelease(s, k)
}

// checkOriginSig checks that the echo carries a certificate of its origin
// from the cluster CA and the origin's signature over the echoed hash;
// sigChecked says the signature is one this node already verified under
// that certificate for that hash.
func (n *Node) checkOriginSig(e *peerwire.Echo, sigChecked bool) error {
	ts := n.current()
	vo, err := ts.origins.verify(e.OriginCert, ts.pool, time.Now())
	if err != nil {
		return err
	}
	if vo.id.Role != pki.RoleNode || vo.id.Name != e.Origin {
		return fmt.Errorf("origin certificate is not node %s's", e.Origin)
	}
	if !sigChecked && !verifyNodeSig(vo.cert.PublicKey, peerwire.BroadcastDigest(e.Session, e.Origin, e.Type, e.Round, e.Hash), e.Sig) {
		return errors.New("origin signature does not verify")
	}
	return nil
}

// equivocation aborts the session, naming the origin: two members hold
// different broadcasts that the origin signed both of.
func (n *Node) equivocation(s *session, origin, msgType string, round int) error {
	err := fmt.Errorf("session %s: %s equivocated: members received different signed %s broadcasts", s.id, origin, msgType)
	n.log.Error().Str("session", s.id.String()).Str("peer", origin).Int("round", round).Str("culprit", origin).Msg("equivocation detected; session aborted")
	s.party.Abort(&tss.SessionError{Round: round, Culprits: []string{origin}, Convicted: []string{origin}, Err: fmt.Errorf("%w: %w", tss.ErrMisbehaved, err)})
	return err
}

// maybeRelease hands a broadcast to the party once every member other than
// its origin and this node has echoed the same hash.
func (n *Node) maybeRelease(s *session, k broadcastKey) error {
	s.mu.Lock()
	b := s.broadcasts[k]
	ready := b != nil && !b.released && b.env != nil && len(b.echoes) == len(s.members)-2
	var env *peerwire.Envelope
	if ready {
		b.released, env, b.env = true, b.env, nil
	}
	s.mu.Unlock()
	if !ready {
		return nil
	}
	return s.party.Deliver(env.From, true, env.Payload)
}

// sendEchoes sends an echo to every member but this node and the origin,
// in the background: the session's deadline bounds it.
func (n *Node) sendEchoes(s *session, e *peerwire.Echo) {
	for _, m := range s.members {
		if m == n.cfg.Name || m == e.Origin {
			continue
		}
		p, ok := n.peers[m]
		if !ok {
			continue
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n.cfg.SignTimeout))
			defer cancel()
			p.wake()
			if _, err := p.client().Echo(ctx, e); err != nil {
				n.log.Warn().Err(err).Str("session", s.id.String()).Str("peer", m).Msg("echo not delivered")
			}
		}()
	}
}

// signBroadcast signs a broadcast this node sends, with its node key.
func (n *Node) signBroadcast(env *peerwire.Envelope) error {
	var err error
	env.Sig, err = n.signWithNodeKey(broadcastDigest(env))
	return err
}

// broadcastDigest is what the origin of a broadcast signs: the session,
// origin, type, round and payload hash, the same for every recipient.
func broadcastDigest(env *peerwire.Envelope) []byte {
	hash := sha256.Sum256(env.Payload)
	return peerwire.BroadcastDigest(env.Session, env.From, env.Type, env.Round, hash[:])
}

// signWithNodeKey signs a SHA-256 digest with this node's identity key, for
// statements other members check against its certificate (verifyNodeSig).
func (n *Node) signWithNodeKey(digest []byte) ([]byte, error) {
	key, ok := n.current().cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("node key cannot sign")
	}
	if _, isEd := key.Public().(ed25519.PublicKey); isEd {
		return key.Sign(rand.Reader, digest, crypto.Hash(0))
	}
	return key.Sign(rand.Reader, digest, crypto.SHA256)
}

func verifyNodeSig(pub any, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return p256.VerifyASN1(k, digest, sig)
	case ed25519.PublicKey:
		return ed25519.Verify(k, digest, sig)
	}
	return false
}
