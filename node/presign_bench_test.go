package node

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkPresignedSign measures the signer cluster's part of a warm-pool
// full handshake: one signing request at a time, each served from a full
// presignature pool, on an in-memory cluster (real nodes, real gRPC with
// mutual TLS over bufconn, real GG18, the echo check for three members).
// (1,2) is the reference to divide by: it has no echo round trips. ns/op
// is one request; p50-ms is the median request.
//
// Filling the pools costs the offline rounds of depth presignatures per
// node (about a minute for (2,3) on 2 cores): run one sub-benchmark at a
// time, e.g. -bench 'PresignedSign/t2-n3' -benchtime 8x.
func BenchmarkPresignedSign(b *testing.B) {
	for _, tc := range []struct {
		t     int
		names []string
	}{{1, []string{"a", "b"}}, {2, []string{"a", "b", "c"}}} {
		b.Run(fmt.Sprintf("t%d-n%d", tc.t, len(tc.names)), func(b *testing.B) {
			const depth = 8
			c := newTestCluster(b, tc.names, func(cfg *Config) {
				cfg.Presign = PresignConfig{Depth: depth, MaxAge: Duration(time.Hour)}
			})
			c.keygen(tc.t)
			a := c.nodes["a"]
			full := func() bool {
				for _, n := range c.nodes {
					if n.pool.depth(c.key) < depth {
						return false
					}
				}
				return true
			}
			waitFor(b, 5*time.Minute, "every pool fills", full)
			var took []time.Duration
			i := 0
			for b.Loop() {
				if a.pool.depth(c.key) == 0 {
					b.StopTimer()
					waitFor(b, 5*time.Minute, "every pool refills", full)
					b.StartTimer()
				}
				hits := metricValue(b, a, "tkeyless_signer_presign_total", "event", "hit")
				start := time.Now()
				if err := c.sign("a", fmt.Sprintf("warm %d", i)); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
				if got := metricValue(b, a, "tkeyless_signer_presign_total", "event", "hit"); got != hits+1 {
					b.Fatalf("request %d did not use a presignature (hits %v → %v)", i, hits, got)
				}
				i++
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
		})
	}
}
