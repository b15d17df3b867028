package node

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// Carried echoes: the echo check of a signature's rounds 5 to 9 without
// the round trips of its own.
//
// The echo check (echo.go) holds every broadcast until each other member
// has echoed the same hash: each round costs a message and then an echo,
// two network hops and twice the calls. In a session prepared with
// CarryEchoes (protocol version 4, chosen by the coordinator), a broadcast
// of round 5 or later reaches the party as soon as it arrives, signed and
// checked as before; this node's echo of it rides on its next round's
// envelope to each other member; and before this node sends a message of
// round r it waits until every broadcast of rounds 5 to r−2 has been echoed
// identically by every other member. The echoes of round r−1 arrive with
// the very messages the party needed to make round r, so an honest session
// never waits: one hop per round.
//
// Why deferring the check by one round is safe for GG18's rounds 5–9
// (docs/presigning.md, SECURITY.md "Carried echoes"):
//   - Rounds 5 and 7 are commitments (hiding), rounds 6 and 8 their
//     openings (binding), round 9 the share s_i. What an honest party
//     sends in rounds 5, 6 and 8 depends on its own state only; round 7
//     (U_i = ρ_i·V, T_i = l_i·A) depends on the round-6 openings it
//     received, but is sent only as a commitment.
//   - The wait makes a party open its round-7 commitment (round 8) only
//     after everyone confirmed the round-6 openings it computed from, and
//     send s_i (round 9) only after round 7 is confirmed; round 8 cannot
//     differ between members without opening one confirmed commitment two
//     ways. So no value that depends on what an equivocator sent leaves an
//     honest party before the equivocation would have been caught, and
//     s_i never leaves unless the check of rounds 5–8 passed, as with the
//     immediate echo check.
//   - Equivocation is proved exactly as before: an echo still carries the
//     origin's signature, checked (or known checked) before it counts.
//   - Rounds 1–4 keep the immediate check: a presignature's half is ready
//     only once its offline rounds were confirmed, and round 2's MtA
//     answers depend on round 1.

// carriedFrom is the first round whose echoes are carried, in a carry
// session.
const carriedFrom = 5

// carried reports whether round's broadcasts are echoed on the next
// round's envelopes in this session.
func (s *session) carried(round int) bool { return s.carry && round >= carriedFrom }

// canCarryEchoes reports whether a signing session with these members may
// carry its echoes: three or more members (two have no echo check), and a
// link to every other member at a version that carries them.
func (n *Node) canCarryEchoes(members []string) bool {
	if len(members) < 3 || n.noCarry.Load() {
		return false
	}
	for _, m := range members {
		if m == n.cfg.Name {
			continue
		}
		p, ok := n.peers[m]
		if !ok || p.client().Version() < peerwire.CarryEchoesVersion {
			return false
		}
	}
	return true
}

// oweLocked records this node's echo of a broadcast for every member but
// this node (self) and the origin; s.mu is held.
func (s *session) oweLocked(self string, e peerwire.Echo) {
	for _, m := range s.members {
		if m != self && m != e.Origin {
			s.owed[m] = append(s.owed[m], e)
		}
	}
}

// takeOwed removes and returns the echoes owed to member of broadcasts of
// round: they go with this node's envelope of the next round.
func (s *session) takeOwed(member string, round int) []peerwire.Echo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []peerwire.Echo
	s.owed[member] = slices.DeleteFunc(s.owed[member], func(e peerwire.Echo) bool {
		if e.Round == round {
			out = append(out, e)
			return true
		}
		return false
	})
	return out
}

// wakeLocked wakes the sends waiting for echoes; s.mu is held.
func (s *session) wakeLocked() {
	if s.echoWake != nil {
		close(s.echoWake)
		s.echoWake = nil
	}
}

// unconfirmedLocked names the members whose echo of a carried broadcast
// of round upTo or earlier this node still lacks, and whether two hashes of
// one broadcast differ; s.mu is held. Every broadcast of those rounds has
// arrived: the party made the round that waits only after all of them.
func (s *session) unconfirmedLocked(self string, upTo int) (missing []string, conflict bool) {
	for k, b := range s.broadcasts {
		round := tss.RoundOf(k.msgType)
		if !s.carried(round) || round > upTo {
			continue
		}
		if b.conflict() {
			return nil, true
		}
		for _, m := range s.members {
			if _, ok := b.echoes[m]; !ok && m != self && m != k.origin && !slices.Contains(missing, m) {
				missing = append(missing, m)
			}
		}
	}
	slices.Sort(missing)
	return missing, false
}

// awaitEchoes waits until every other member echoed, identically, every
// carried broadcast of round upTo or earlier. A member whose echoes do not
// come within the stall bound is blamed (not convicted: the echo may be
// lost, or the member slow).
func (n *Node) awaitEchoes(ctx context.Context, s *session, upTo int) error {
	if upTo < carriedFrom {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.stallTimeout())
	defer cancel()
	for {
		s.mu.Lock()
		missing, conflict := s.unconfirmedLocked(n.cfg.Name, upTo)
		if s.echoWake == nil {
			s.echoWake = make(chan struct{})
		}
		wake := s.echoWake
		s.mu.Unlock()
		switch {
		case conflict:
			// equivocation() has aborted the party already.
			return fmt.Errorf("session %s: members received different broadcasts of round %d or earlier", s.id, upTo)
		case len(missing) == 0:
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			err := fmt.Errorf("session %s: no echo of rounds %d to %d from %v: %w", s.id, carriedFrom, upTo, missing, context.Cause(ctx))
			if errors.Is(err, context.DeadlineExceeded) {
				s.party.Abort(&tss.SessionError{Round: upTo + 2, Culprits: missing, Waiting: missing, Err: err})
			}
			return err
		}
	}
}
