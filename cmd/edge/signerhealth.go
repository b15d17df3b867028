package main

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// pinger is what a signerWatch needs of the keyless client: keylessSource, whose Ping follows
// an identity reload.
type pinger interface {
	Ping(ctx context.Context, endpoint string) error
}

// signerWatch is the edge's own view of each signer, which a signer's status cannot give (a
// signer may be up and unreachable from this edge): it pings every signer and records in the
// metrics which ones answer, logging each change of state. Pings go over the pooled
// connections handshakes use, so they cost no new connection while a signer is up.
type signerWatch struct {
	p         pinger
	endpoints []string
	m         *edgeMetrics
	log       zerolog.Logger
	up        map[string]bool
}

func newSignerWatch(p pinger, endpoints []string, m *edgeMetrics, log zerolog.Logger) *signerWatch {
	return &signerWatch{p: p, endpoints: endpoints, m: m, log: log, up: map[string]bool{}}
}

// watchSigners probes at once, then every interval until ctx ends; interval <= 0 turns it off.
func watchSigners(ctx context.Context, p pinger, endpoints []string, interval time.Duration, m *edgeMetrics, log zerolog.Logger) {
	if interval <= 0 {
		return
	}
	w := newSignerWatch(p, endpoints, m, log)
	w.probe(ctx)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.probe(ctx)
		}
	}
}

// probe pings each signer once, each within its own deadline.
func (w *signerWatch) probe(ctx context.Context) {
	for _, addr := range w.endpoints {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		start := time.Now()
		err := w.p.Ping(pctx, addr)
		cancel()
		if ctx.Err() != nil {
			return // shutting down: not the signer's failure
		}
		w.m.signerAnswered(addr, err, time.Now())
		was, seen := w.up[addr]
		switch {
		case err != nil && (was || !seen):
			w.log.Warn().Str("signer", addr).Err(err).Msg("signer does not answer pings")
		case err == nil && seen && !was:
			w.log.Info().Str("signer", addr).Int64("dur_ms", time.Since(start).Milliseconds()).Msg("signer answers pings again")
		}
		w.up[addr] = err == nil
	}
}
