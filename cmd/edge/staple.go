package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// stapler keeps the served chain's OCSP staple fresh: fetched when a chain is first served (at
// start, on SIGHUP, after an ACME renewal) and again half way to the response's next update. A
// chain whose certificate names no responder is served without one.
type stapler struct {
	reload func(*tlsglue.Chain) error
	log    zerolog.Logger

	mu      sync.Mutex
	current *tlsglue.Chain
	wake    chan struct{}
}

func newStapler(initial *tlsglue.Chain, reload func(*tlsglue.Chain) error, log zerolog.Logger) *stapler {
	return &stapler{reload: reload, log: log, current: initial, wake: make(chan struct{}, 1)}
}

// set serves a new chain now (without a staple until one is fetched) and has run fetch one.
func (s *stapler) set(c *tlsglue.Chain) error {
	if err := s.reload(c); err != nil {
		return err
	}
	s.mu.Lock()
	s.current = c
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// serves reports whether c takes over this stapler's chain: the same key,
// and the current leaf covers c's first name.
func (s *stapler) serves(c *tlsglue.Chain) bool {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	a, _ := tlsglue.SKI(cur.Leaf.PublicKey)
	b, _ := tlsglue.SKI(c.Leaf.PublicKey)
	names := leafNames(c.Leaf)
	return a == b && len(names) > 0 && cur.Leaf.VerifyHostname(names[0]) == nil
}

func (s *stapler) run(ctx context.Context) {
	for {
		s.mu.Lock()
		chain := s.current
		s.mu.Unlock()
		fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		staple, resp, err := tlsglue.FetchOCSP(fctx, chain, nil)
		cancel()
		var next <-chan time.Time
		switch {
		case errors.Is(err, tlsglue.ErrNoOCSP):
			// Nothing to staple until another chain is served.
		case err != nil:
			s.log.Warn().Err(err).Str("serial", chain.Leaf.SerialNumber.String()).Msg("OCSP staple not refreshed; retrying in 5 minutes")
			next = time.After(5 * time.Minute)
		default:
			stapled := *chain
			stapled.OCSPStaple = staple
			s.mu.Lock()
			if s.current == chain {
				err = s.reload(&stapled)
			}
			s.mu.Unlock()
			if err != nil {
				s.log.Warn().Err(err).Msg("OCSP staple not applied")
			} else {
				s.log.Info().Str("serial", chain.Leaf.SerialNumber.String()).Time("next_update", resp.NextUpdate).Msg("OCSP staple refreshed")
			}
			next = time.After(time.Until(tlsglue.StapleRefresh(resp)))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-next:
		}
	}
}
