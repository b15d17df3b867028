package node

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// Convictions: a peer whose message proved it deviated from the protocol
// (tss.ErrMisbehaved: an MtA answer out of range, a degenerate proof, a
// signed equivocation, a forged echo) is convicted by the node that caught
// it. From then on this node leaves it out of everything: no quorum it
// picks includes it, no session it is a member of is joined, no
// presignature with it is kept. An honest member is never convicted (its
// messages pass every check), so this costs nothing but the convicted
// node's share of the work; it ends only when an admin readmits the peer
// (`signer peer readmit`), after finding out what happened. Each caught
// attempt therefore costs a cheating node its place in the cluster: it
// cannot repeat an attack to learn from many outcomes.
//
// Convictions are kept in data_dir/convicted.json, so a restart forgets
// nothing.

// errConvicted is returned for a session involving a convicted peer.
var errConvicted = errors.New("convicted of misbehaviour on this node")

type convictions struct {
	path string
	mu   sync.Mutex
	m    map[string]peerwire.Conviction
}

func loadConvictions(dataDir string) (*convictions, error) {
	c := &convictions{path: filepath.Join(dataDir, "convicted.json"), m: map[string]peerwire.Conviction{}}
	if err := loadJSON(c.path, &c.m); err != nil {
		return nil, fmt.Errorf("convictions: %w", err)
	}
	return c, nil
}

func (c *convictions) get(peer string) (peerwire.Conviction, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[peer]
	return v, ok
}

// convict records peer's conviction; false if it already was convicted.
func (c *convictions) add(peer string, v peerwire.Conviction) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[peer]; ok {
		return false, nil
	}
	c.m[peer] = v
	return true, saveJSON(c.path, c.m)
}

func (c *convictions) remove(peer string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[peer]; !ok {
		return false, nil
	}
	delete(c.m, peer)
	return true, saveJSON(c.path, c.m)
}

// convicted reports whether this node excludes peer.
func (n *Node) convicted(peer string) bool {
	_, ok := n.convictions.get(peer)
	return ok
}

// convict excludes peer from every session on this node, at once and
// until an admin readmits it, and raises the alarm.
func (n *Node) convict(peer string, session peerwire.SessionID, key string, reason error) {
	if _, ok := n.peers[peer]; !ok {
		return // never this node itself, nor a name it does not know
	}
	v := peerwire.Conviction{At: time.Now().UTC(), Session: session.String(), Key: key, Reason: reason.Error()}
	added, err := n.convictions.add(peer, v)
	if err != nil {
		n.log.Error().Err(err).Str("peer", peer).Msg("conviction not saved; it holds until this node restarts")
	}
	if !added {
		return
	}
	n.metrics.convictions.WithLabelValues(peer).Inc()
	n.metrics.convicted.WithLabelValues(peer).Set(1)
	n.log.Error().Bool("alert", true).Str("event", "conviction").Str("peer", peer).Str("session", v.Session).Str("key", key).Str("reason", v.Reason).
		Msg("peer convicted of misbehaviour: it is excluded from every session on this node until an admin runs `signer peer readmit`")
	n.pool.dropMember(peer)
	n.sessions.abortWith(peer, fmt.Errorf("member %s: %w", peer, errConvicted))
}

// readmit ends a conviction (an admin's decision).
func (n *Node) readmit(peer, by string) (bool, error) {
	was, err := n.convictions.remove(peer)
	if err != nil {
		return was, err
	}
	if was {
		// A fresh start: the failures that led to the conviction no
		// longer keep the peer cooling down either.
		if p, ok := n.peers[peer]; ok {
			p.health.mu.Lock()
			p.health.failures, p.health.coolUntil = 0, time.Time{}
			p.health.mu.Unlock()
		}
		n.metrics.convicted.WithLabelValues(peer).Set(0)
		n.log.Warn().Str("event", "readmit").Str("peer", peer).Str("by", by).Msg("peer readmitted by an admin: it may take part in sessions again")
	}
	return was, nil
}

// sessionFailed learns what it can from a session that failed on this
// node, coordinated here or elsewhere: it convicts the members proven to
// have cheated, charges the key's abort budget for an abort that named
// nobody, and raises an alert for a fault of this node's own arithmetic.
func (n *Node) sessionFailed(s *session, err error) {
	var se *tss.SessionError
	if !errors.As(err, &se) {
		return
	}
	for _, c := range se.Convicted {
		n.convict(c, s.id, s.key, se)
	}
	if se.Fault {
		n.metrics.faults.WithLabelValues(s.key).Inc()
		n.log.Error().Bool("alert", true).Str("event", "arithmetic_fault").Str("session", s.id.String()).Str("key", s.key).Int("round", se.Round).
			Msg("this node's own Paillier or Ñ arithmetic failed its consistency check; the result was discarded and no peer was blamed. Check this machine's memory and CPU")
	}
	if se.Unattributed && (s.kind == peerwire.KindSign || s.kind == peerwire.KindPresign) {
		n.chargeAbort(s.key, s.id, se)
	}
}
