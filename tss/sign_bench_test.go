package tss

import (
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	"github.com/bnb-chain/tss-lib/v2/test"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// BenchmarkSign measures one threshold signature through the engine (the
// session runner, the Outbox, and the wire encoding) for each (t, n), all
// parties in this process. Divide by BenchmarkSignReference for the
// engine's overhead over bare tss-lib.
func BenchmarkSign(b *testing.B) {
	d := digests()["SHA-256"]
	for _, ts := range thresholdSets {
		shares := fixtureShares(b, ts.t, ts.n)
		quorum := shares[:ts.t+1]
		b.Run(fmt.Sprintf("t%d-n%d", ts.t, ts.n), func(b *testing.B) {
			for b.Loop() {
				if _, err := runSign(b, quorum, d, nil); err != nil {
					b.Fatal(err)
				}
			}
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
			for b.Loop() {
				referenceSign(b, ts.t, m, shares, DigestScalar(d))
			}
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
