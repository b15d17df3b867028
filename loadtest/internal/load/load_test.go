package load

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func tlsServer(t *testing.T) (*httptest.Server, *tls.Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("hello"))
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	return srv, cfg
}

// A few seconds of load against a real TLS server: the counts add up and
// the resumption mix is honoured.
func TestRunCountsAddUp(t *testing.T) {
	srv, cfg := tlsServer(t)
	for _, tc := range []struct {
		resume    int
		keepAlive bool
	}{{0, false}, {90, false}, {100, false}, {0, true}} {
		samples, elapsed, err := Run(context.Background(), Options{
			URL: srv.URL + "/", Concurrency: 4, Duration: 1500 * time.Millisecond,
			ResumePercent: tc.resume, KeepAlive: tc.keepAlive, TLS: cfg,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := Summary(samples, elapsed)
		if r.Requests == 0 || r.Requests != r.Successes+r.Errors {
			t.Fatalf("resume %d%%: %d requests ≠ %d ok + %d errors", tc.resume, r.Requests, r.Successes, r.Errors)
		}
		if r.Full+r.Resumed+r.Reused != r.Successes || r.Resumed > r.Requests {
			t.Fatalf("resume %d%%: %d full + %d resumed + %d reused ≠ %d ok", tc.resume, r.Full, r.Resumed, r.Reused, r.Successes)
		}
		if r.Errors != 0 {
			t.Fatalf("errors against a healthy server: %v", r.ByCause)
		}
		share := float64(r.Resumed) / float64(r.Successes)
		switch {
		case tc.keepAlive && r.Reused < r.Successes/2:
			t.Fatalf("keep-alive: only %d of %d requests reused a connection", r.Reused, r.Successes)
		case tc.keepAlive:
		case tc.resume == 0 && r.Resumed != 0:
			t.Fatalf("0%% resumption resumed %d", r.Resumed)
		case tc.resume == 90 && (share < 0.7 || share > 0.99):
			t.Fatalf("90%% resumption resumed %.0f%%", 100*share)
		case tc.resume == 100 && r.Full != 0:
			t.Fatalf("100%% resumption: %d full handshakes after the warm-up, want 0", r.Full)
		}
		t.Logf("resume %d%% keep-alive %v: %d requests, %.0f req/s, %d full, %d resumed, %d reused; p50 %v",
			tc.resume, tc.keepAlive, r.Requests, r.Goodput, r.Full, r.Resumed, r.Reused, r.Total.P50)
	}
}

// An unreachable target yields errors by cause, within the run's time.
func TestUnreachableTarget(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	samples, elapsed, err := Run(context.Background(), Options{URL: "https://" + addr + "/", Concurrency: 2, Duration: time.Second, TLS: &tls.Config{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("run took %v for a 1 s duration", time.Since(start))
	}
	r := Summary(samples, elapsed)
	if r.Errors == 0 || r.Successes != 0 || r.ByCause["connection refused"] != r.Errors {
		t.Fatalf("want only connection-refused errors, got %d ok, %v", r.Successes, r.ByCause)
	}
	// A server that accepts and never answers: each request times out.
	l, _ = net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	samples, elapsed, _ = Run(context.Background(), Options{URL: "https://" + l.Addr().String() + "/", Concurrency: 2, Requests: 2, Timeout: 300 * time.Millisecond, TLS: &tls.Config{}}, nil)
	r = Summary(samples, elapsed)
	if r.Errors != 2 || !strings.Contains(strings.Join(keys(r.ByCause), ","), "timeout") {
		t.Fatalf("silent server: want 2 timeouts, got %v", r.ByCause)
	}
}

func keys(m map[string]int) (out []string) {
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestCheckTarget(t *testing.T) {
	for _, bad := range []string{"http://127.0.0.1/", "https://example.com/", "https://10.0.0.1:443/", "not a url"} {
		if _, err := CheckTarget(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, good := range []string{"https://127.0.0.1:8443/", "https://localhost/", "https://[::1]:1/"} {
		if _, err := CheckTarget(good, false); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	if _, err := CheckTarget("https://example.com/", true); err != nil {
		t.Error(err)
	}
}
