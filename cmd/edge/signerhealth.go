package main

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// pinger is what watchSigners needs of the keyless client: keylessSource, whose Ping follows an
// identity reload.
type pinger interface {
	Ping(ctx context.Context, endpoint string) error
}

// watchSigners pings every signer at once and then every interval until ctx ends, and records
// in the metrics which ones answer: the edge's own view of each signer, which a signer's status
// cannot give (a signer may be up and unreachable from this edge). A change of state is logged.
// Pings go over the pooled connections handshakes use, so they cost no new connection while a
// signer is up. interval <= 0 turns this off.
func watchSigners(ctx context.Context, p pinger, endpoints []string, interval time.Duration, m *edgeMetrics, log zerolog.Logger) {
	if interval <= 0 {
		return
	}
	up := map[string]bool{}
	probe := func() {
		for _, addr := range endpoints {
			pctx, cancel := context.WithTimeout(ctx, min(interval, 5*time.Second))
			start := time.Now()
			err := p.Ping(pctx, addr)
			cancel()
			if ctx.Err() != nil {
				return
			}
			m.signerAnswered(addr, err, time.Now())
			was, seen := up[addr]
			switch {
			case err != nil && (was || !seen):
				log.Warn().Str("signer", addr).Err(err).Msg("signer does not answer pings")
			case err == nil && seen && !was:
				log.Info().Str("signer", addr).Int64("dur_ms", time.Since(start).Milliseconds()).Msg("signer answers pings again")
			}
			up[addr] = err == nil
		}
	}
	probe()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			probe()
		}
	}
}
