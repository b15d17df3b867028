package load

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// An open loop keeps its arrival rate whatever the server does: against a
// server that answers slowly, a closed loop of one would make a handful of
// requests, the open loop makes rate × duration of them, from the asked
// source address, resuming the share asked.
func TestOpenLoop(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]int{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.RemoteAddr[:strings.LastIndex(r.RemoteAddr, ":")]
		mu.Lock()
		remotes[host]++
		mu.Unlock()
		time.Sleep(300 * time.Millisecond) // a slow server: the open loop must not slow down with it
		w.Write([]byte("hello"))
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()

	for _, arrival := range []string{ArrivalConstant, ArrivalPoisson} {
		t.Run(arrival, func(t *testing.T) {
			const rate, dur = 40.0, 1500 * time.Millisecond
			o := Options{URL: srv.URL + "/", Rate: rate, Arrival: arrival, Concurrency: 1024, Duration: dur,
				ResumePercent: 50, Source: "127.0.0.2", TLS: cfg}
			samples, elapsed, err := Run(context.Background(), o, nil)
			if err != nil {
				t.Fatal(err)
			}
			r := Summary(samples, elapsed)
			r.Describe(o)
			want := rate * dur.Seconds()
			lo, hi := 0.9*want, 1.1*want+1
			if arrival == ArrivalPoisson {
				lo, hi = 0.6*want, 1.4*want // ±4 σ of a Poisson count of 60
			}
			if float64(r.Requests) < lo || float64(r.Requests) > hi {
				t.Fatalf("%d arrivals in %v at %g/s, want about %.0f", r.Requests, dur, rate, want)
			}
			if r.Errors != 0 || r.Successes != r.Requests || r.Resumed == 0 || r.Full == 0 {
				t.Fatalf("report: %+v", r)
			}
			if r.Mode != "open" || r.Rate != rate || r.Source != "127.0.0.2" || r.Arrival != arrival {
				t.Errorf("description: mode %q rate %g source %q arrival %q", r.Mode, r.Rate, r.Source, r.Arrival)
			}
			if r.Goodput < 0.8*rate || r.Total.P50 < 300*time.Millisecond {
				t.Errorf("goodput %.1f/s, p50 %v; want about %g/s and ≥ 300ms", r.Goodput, r.Total.P50, rate)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(remotes) != 1 || remotes["127.0.0.2"] == 0 {
				t.Errorf("requests came from %v, want only 127.0.0.2", remotes)
			}
			clear(remotes)
		})
	}
}

// Arrivals beyond the outstanding bound are dropped by the tester and
// counted, not queued: the tester cannot collapse with the server.
func TestOpenLoopBound(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	samples, elapsed, err := Run(context.Background(), Options{URL: srv.URL + "/", Rate: 50, Concurrency: 2, Duration: 500 * time.Millisecond,
		Timeout: time.Second, TLS: cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := Summary(samples, elapsed)
	if r.ByCause[errTooManyInFlight] < 15 || r.Successes != 0 {
		t.Fatalf("report: %+v", r)
	}
}

func TestOpenLoopRejects(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string // in the error: the check that refused it
	}{
		// A request count passes Run's general check, so the open loop's
		// own check (it runs for a duration) is the one that refuses.
		{Options{Rate: 10, Concurrency: 1, Requests: 5}, "open loop (a rate): give a duration"},
		{Options{Rate: 10, Concurrency: 1, Duration: time.Second, KeepAlive: true}, "keep-alive"},
		{Options{Rate: 10, Concurrency: 1, Duration: time.Second, Arrival: "burst"}, `arrival "burst"`},
		{Options{Rate: -1, Concurrency: 1, Duration: time.Second}, "rate -1"},
		{Options{Concurrency: 1, Duration: time.Second, Source: "not-an-ip"}, `source "not-an-ip"`},
	} {
		c.o.URL = "https://127.0.0.1:1/"
		if _, _, err := Run(context.Background(), c.o, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", c.o, err, c.want)
		}
	}
}

func TestSummarizePercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 1000; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(ds)
	near := func(got, want time.Duration) bool { return got >= want-want/500 && got <= want+want/500 }
	if s.N != 1000 || !near(s.P50, 500*time.Millisecond) || !near(s.P95, 950*time.Millisecond) || !near(s.P99, 990*time.Millisecond) ||
		s.Max != time.Second || !near(s.Mean, 500500*time.Microsecond) {
		t.Errorf("stats = %+v", s)
	}
	if (Summarize(nil) != Stats{}) {
		t.Error("stats of nothing are not zero")
	}
}

// A latency beyond the histogram's top (10 minutes) still counts: in N and
// at the top of the percentiles, not silently dropped.
func TestSummarizeBeyondTheTop(t *testing.T) {
	top := 10 * time.Minute
	s := Summarize([]time.Duration{time.Millisecond, 20 * time.Minute, 20 * time.Minute})
	near := func(got, want time.Duration) bool { return got >= want-want/500 && got <= want+want/500 }
	if s.N != 3 || !near(s.P50, top) || !near(s.P99, top) || s.Max != 20*time.Minute {
		t.Errorf("stats = %+v", s)
	}
}
