package load

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"time"
)

// runOpen is Run in open loop: arrivals at o.Rate per second for o.Duration,
// each a new connection from its own worker, with at most o.Concurrency
// outstanding. The elapsed time returned is the arrival window, so
// throughput is goodput over the time load was offered; requests still in
// flight at its end finish (within o.Timeout) and count.
func runOpen(ctx context.Context, o Options, u *url.URL, dialer net.Dialer, tick func()) ([]Sample, time.Duration, error) {
	if o.Duration <= 0 {
		return nil, 0, errors.New("open loop (a rate): give a duration")
	}
	if o.KeepAlive {
		return nil, 0, errors.New("open loop (a rate): every arrival is a new connection; keep-alive does not apply")
	}
	gap := func() time.Duration { return time.Duration(float64(time.Second) / o.Rate) }
	switch o.Arrival {
	case "", ArrivalConstant:
	case ArrivalPoisson:
		gap = func() time.Duration { return time.Duration(rand.ExpFloat64() / o.Rate * float64(time.Second)) }
	default:
		return nil, 0, fmt.Errorf("arrival %q: want %s or %s", o.Arrival, ArrivalConstant, ArrivalPoisson)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	if o.TLS == nil {
		o.TLS = &tls.Config{}
	}
	if o.TLS.ServerName == "" && !o.TLS.InsecureSkipVerify {
		o.TLS = o.TLS.Clone()
		o.TLS.ServerName = u.Hostname()
	}
	// One cache for every arrival: a resuming arrival offers the latest
	// ticket any earlier arrival received, as a returning visitor would.
	cache := tls.NewLRUClientSessionCache(16)
	newWorker := func() *worker {
		return &worker{o: o, dialer: dialer, addr: addr, host: u.Host, path: u.RequestURI(), cache: cache, first: true}
	}
	if o.ResumePercent > 0 && !o.NoWarmup {
		w := newWorker()
		w.first = false // a full handshake, whose ticket fills the cache
		w.warmUp(ctx)
	}

	var mu sync.Mutex
	var samples []Sample
	record := func(s Sample) {
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
		if tick != nil {
			tick()
		}
	}
	outstanding := make(chan struct{}, o.Concurrency)
	var wg sync.WaitGroup
	timer := time.NewTimer(0)
	defer timer.Stop()
	start := time.Now()
	next := start
	for n := 0; o.Requests <= 0 || n < o.Requests; n++ {
		// The next arrival is due at a fixed time whatever happened to the
		// earlier ones: a late tick fires at once, so the rate holds.
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			wg.Wait()
			return samples, time.Since(start), nil
		case <-timer.C:
		}
		select {
		case outstanding <- struct{}{}:
			wg.Go(func() {
				defer func() { <-outstanding }()
				w := newWorker()
				s := w.do(ctx)
				w.close()
				if s.Err != "" && ctx.Err() != nil {
					return // cut off by an interrupt: not the target's fault
				}
				record(s)
			})
		default:
			record(Sample{Start: time.Now(), Err: errTooManyInFlight})
		}
		next = next.Add(gap())
		if next.Sub(start) >= o.Duration {
			break
		}
	}
	window := time.Since(start)
	if window < o.Duration && o.Requests <= 0 {
		window = o.Duration
	}
	wg.Wait()
	return samples, window, nil
}
