package tss

import (
	"fmt"
	"math/big"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	"github.com/bnb-chain/tss-lib/v2/test"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureCPU runs the benchmark loop body and reports cpu-s/op: the
// process's CPU seconds per operation (every party is in this process, so
// this is the whole quorum's cost of one signature), beside the wall-clock
// ns/op.
func measureCPU(b *testing.B, op func()) {
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		op()
		n++
	}
	b.ReportMetric((cpuTime(b)-start).Seconds()/float64(n), "cpu-s/op")
}

// BenchmarkSign measures one threshold signature through tkeyless's
// engine (engine.go, with the session runner, the Outbox and the wire
// encoding) for each (t, n), all parties in this process. Divide its
// cpu-s/op by BenchmarkSignReference's for the engine's cost relative to
// stock tss-lib.
func BenchmarkSign(b *testing.B) {
	d := digests()["SHA-256"]
	for _, ts := range thresholdSets {
		shares := fixtureShares(b, ts.t, ts.n)
		quorum := shares[:ts.t+1]
		var warm sync.Once
		b.Run(fmt.Sprintf("t%d-n%d", ts.t, ts.n), func(b *testing.B) {
			// The first session builds the peers' fixed-base tables, kept
			// per share for the node's life: not part of a signature's cost.
			warm.Do(func() {
				if _, err := runSign(b, quorum, d, nil); err != nil {
					b.Fatal(err)
				}
			})
			measureCPU(b, func() {
				if _, err := runSign(b, quorum, d, nil); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkSignReference runs tss-lib's own signing the way tss-lib's tests
// do (one process, its SharedPartyUpdater, no transport, no checks): the
// reference BenchmarkSign is divided by.
func BenchmarkSignReference(b *testing.B) {
	d := digests()["SHA-256"]
	for _, ts := range thresholdSets {
		shares := fixtureShares(b, ts.t, ts.n)[:ts.t+1]
		var names []string
		for _, s := range shares {
			names = append(names, s.Self)
		}
		m, err := newMembers(names)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("t%d-n%d", ts.t, ts.n), func(b *testing.B) {
			measureCPU(b, func() { referenceSign(b, ts.t, m, shares, DigestScalar(d)) })
		})
	}
}

func referenceSign(b *testing.B, threshold int, m *members, shares []*Share, msg *big.Int) {
	n := len(shares)
	pctx := tsslib.NewPeerContext(m.sorted)
	errCh := make(chan *tsslib.Error, n)
	outCh := make(chan tsslib.Message, n)
	endCh := make(chan *common.SignatureData, n)
	parties := make([]tsslib.Party, n)
	for _, s := range shares {
		pid := m.byName[s.Self]
		params := tsslib.NewParameters(curve, pctx, pid, n, threshold)
		parties[pid.Index] = signing.NewLocalParty(msg, params, s.data, outCh, endCh)
	}
	for _, p := range parties {
		go func() {
			if err := p.Start(); err != nil {
				errCh <- err
			}
		}()
	}
	for ended := 0; ended < n; {
		select {
		case err := <-errCh:
			b.Fatal(err)
		case msg := <-outCh:
			if to := msg.GetTo(); to == nil {
				for _, p := range parties {
					if p.PartyID().Index != msg.GetFrom().Index {
						go test.SharedPartyUpdater(p, msg, errCh)
					}
				}
			} else {
				go test.SharedPartyUpdater(parties[to[0].Index], msg, errCh)
			}
		case <-endCh:
			ended++
		}
	}
}

// BenchmarkSignConcurrent measures signing throughput with 1, 2, 4 and 8
// signatures in flight at once, all parties in this process (so every
// party of every session shares this machine's cores, as a cluster on one
// host would). It reports signatures per second.
func BenchmarkSignConcurrent(b *testing.B) {
	d := digests()["SHA-256"]
	for _, ts := range thresholdSets {
		shares := fixtureShares(b, ts.t, ts.n)[:ts.t+1]
		for _, conc := range []int{1, 2, 4, 8} {
			b.Run(fmt.Sprintf("t%d-n%d/c%d", ts.t, ts.n, conc), func(b *testing.B) {
				start := time.Now()
				sigs := 0
				for b.Loop() {
					var wg sync.WaitGroup
					errs := make([]error, conc)
					for i := range conc {
						wg.Go(func() { _, errs[i] = runSign(b, shares, d, nil) })
					}
					wg.Wait()
					for _, err := range errs {
						if err != nil {
							b.Fatal(err)
						}
					}
					sigs += conc
				}
				b.ReportMetric(float64(sigs)/time.Since(start).Seconds(), "sig/s")
			})
		}
	}
}
