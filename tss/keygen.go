package tss

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// KeygenSession is one node's part in a distributed key generation: all n
// nodes run one, each ends with its own Share of a key that never exists
// whole anywhere.
type KeygenSession struct {
	r         *runner
	end       chan *keygen.LocalPartySaveData
	threshold int
}

// NewKeygenSession prepares this node's party of a (threshold, len(parties))
// key generation. preParams are the node's own Paillier and range-proof
// parameters (see LoadOrGeneratePreParams).
func NewKeygenSession(threshold int, parties []string, self string, preParams *PreParams, outbox Outbox) (*KeygenSession, error) {
	m, err := newMembers(parties)
	if err != nil {
		return nil, fmt.Errorf("keygen: %w", err)
	}
	if threshold < 1 || threshold >= len(parties) {
		return nil, fmt.Errorf("keygen: threshold %d needs between %d and %d parties", threshold, threshold+1, len(parties))
	}
	if preParams == nil || !preParams.p.ValidateWithProof() {
		return nil, errors.New("keygen: pre-parameters missing or invalid")
	}
	r, err := newRunner("keygen", self, m, threshold, outbox)
	if err != nil {
		return nil, err
	}
	params := tsslib.NewParameters(curve, tsslib.NewPeerContext(m.sorted), m.byName[self], len(parties), threshold)
	s := &KeygenSession{r: r, end: make(chan *keygen.LocalPartySaveData, 1), threshold: threshold}
	r.party = keygen.NewLocalParty(params, r.out, s.end, preParams.p)
	return s, nil
}

// Deliver hands the session a message from another member. from must be
// the name the transport authenticated. It does not block.
func (s *KeygenSession) Deliver(from string, broadcast bool, payload []byte) error {
	return s.r.deliver(from, broadcast, payload)
}

// Run drives the ceremony to its end and returns this node's share.
func (s *KeygenSession) Run(ctx context.Context) (*Share, error) {
	data, err := run(ctx, s.r, s.end)
	if err != nil {
		return nil, err
	}
	return newShare(s.threshold, s.r.m.names(), s.r.self, *data)
}

// Abort ends the session with err (Kind is filled in): for misbehaviour
// the transport detects, such as an equivocating member.
func (s *KeygenSession) Abort(err *SessionError) { s.r.abort(err) }

// SetStallTimeout makes Run fail, blaming the members it waits for, when
// no message arrives for d. Call it before Run. Zero (the default) waits
// for the context's deadline only.
func (s *KeygenSession) SetStallTimeout(d time.Duration) { s.r.stall = d }
