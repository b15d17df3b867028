package tss

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkPresign measures, for each (t, n) in one run, the offline part
// (rounds 1–4, to ready), the online part (Finish: rounds 5–9) and a full
// signing, and reports online latency and the full/online ratio. ns/op is
// the online finish.
func BenchmarkPresign(b *testing.B) {
	d := digests()["SHA-256"]
	for _, ts := range thresholdSets {
		shares := fixtureShares(b, ts.t, ts.n)[:ts.t+1]
		b.Run(fmt.Sprintf("t%d-n%d", ts.t, ts.n), func(b *testing.B) {
			var offline, online, full []time.Duration
			for b.Loop() {
				b.StopTimer()
				start := time.Now()
				sessions := presignAll(b, context.Background(), shares, fixedStall(10*time.Second))
				offline = append(offline, time.Since(start))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				b.StartTimer()
				start = time.Now()
				_, errs := finishAll(ctx, sessions, d)
				online = append(online, time.Since(start))
				b.StopTimer()
				cancel()
				if len(errs) > 0 {
					b.Fatal(errs)
				}
				start = time.Now()
				if _, err := runSign(b, shares, d, nil); err != nil {
					b.Fatal(err)
				}
				full = append(full, time.Since(start))
				b.StartTimer()
			}
			med := func(ds []time.Duration) time.Duration {
				s := slices.Clone(ds)
				slices.Sort(s)
				return s[len(s)/2]
			}
			b.ReportMetric(float64(med(offline).Microseconds())/1000, "offline-ms")
			b.ReportMetric(float64(med(online).Microseconds())/1000, "online-ms")
			b.ReportMetric(float64(med(full).Microseconds())/1000, "full-ms")
			b.ReportMetric(float64(med(full))/float64(med(online)), "full/online")
		})
	}
}
