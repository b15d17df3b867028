package node

import (
	"fmt"
	"os"
	"runtime/pprof"
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
//
// -cpuprofile would mostly show the offline rounds of the refills. With
// TKEYLESS_ONLINE_CPUPROFILE=file the benchmark profiles only the timed
// requests instead (all of every node: they share this process), e.g.
//
//	TKEYLESS_ONLINE_CPUPROFILE=/tmp/online.prof go test -run XXX \
//	    -bench 'PresignedSign/t2-n3' -benchtime 48x ./node
//	go tool pprof -top /tmp/online.prof
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
			prof := startOnlineProfile(b)
			defer prof.pause()
			var took []time.Duration
			i := 0
			for b.Loop() {
				if a.pool.depth(c.key) == 0 {
					b.StopTimer()
					prof.pause()
					waitFor(b, 5*time.Minute, "every pool refills", full)
					prof.resume()
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

// onlineProfile is a CPU profile of only the timed part of a benchmark,
// to the file TKEYLESS_ONLINE_CPUPROFILE names (off when unset). pprof
// profiles one stretch per file, so each stretch after the first goes to
// file.1, file.2, …; go tool pprof merges them when given them all.
type onlineProfile struct {
	tb      testing.TB
	path    string
	n       int
	running bool
	f       *os.File
}

func startOnlineProfile(tb testing.TB) *onlineProfile {
	p := &onlineProfile{tb: tb, path: os.Getenv("TKEYLESS_ONLINE_CPUPROFILE")}
	p.resume()
	return p
}

func (p *onlineProfile) resume() {
	if p.path == "" || p.running {
		return
	}
	name := p.path
	if p.n > 0 {
		name = fmt.Sprintf("%s.%d", p.path, p.n)
	}
	f, err := os.Create(name)
	if err != nil {
		p.tb.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		p.tb.Fatalf("online profile (not with -cpuprofile): %v", err)
	}
	p.f, p.running = f, true
	p.n++
}

func (p *onlineProfile) pause() {
	if !p.running {
		return
	}
	pprof.StopCPUProfile()
	if err := p.f.Close(); err != nil {
		p.tb.Error(err)
	}
	p.running = false
}
