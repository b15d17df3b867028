package tlsglue

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestRenewNowLimit: an operator's renewal requests start at most one renewal every
// RenewRequestInterval, an interval that doubles with each failure in a row and resets on
// success; none while a renewal is under way; and a request that is not forced renews only a
// certificate within its renewal window.
func TestRenewNowLimit(t *testing.T) {
	leaf := makeCert(t, "leaf.test", nil, false)
	a, err := NewACME(ACMEOptions{CA: "https://acme.invalid/directory", Names: []string{"leaf.test"}, StorageDir: t.TempDir(), Logger: zerolog.Nop()}, leaf.key)
	if err != nil {
		t.Fatal(err)
	}
	chain := &Chain{Leaf: leaf.cert}
	a.current.Store(chain)
	clock := &testClock{t: time.Now()}
	a.now = clock.now
	start := clock.now()
	at := func(d time.Duration) { clock.advance(start.Add(d).Sub(clock.now())) }

	// accepted checks that a request at d was let through to Run.
	accepted := func(d time.Duration, force bool) {
		t.Helper()
		at(d)
		if err := a.RenewNow(force); err != nil {
			t.Fatalf("at %v, force %v: %v", d, force, err)
		}
		select {
		case <-a.renew:
		default:
			t.Fatalf("at %v: accepted, but Run was not told", d)
		}
	}
	// refused checks that a request at d was refused by the limit until after.
	refused := func(d time.Duration, after time.Duration, reason string) {
		t.Helper()
		at(d)
		err := a.RenewNow(true)
		var r *RenewalRefused
		if !errors.As(err, &r) || !r.Limited || !strings.Contains(r.Error(), reason) {
			t.Fatalf("at %v: got %v, want refused by the limit: %s", d, err, reason)
		}
		if after >= 0 && !r.After.Equal(start.Add(after)) {
			t.Errorf("at %v: refused until %v, want %v", d, r.After.Sub(start), after)
		}
		select {
		case <-a.renew:
			t.Fatalf("at %v: refused, but Run was told", d)
		default:
		}
	}

	// Not forced and not due: nothing to do, and no limit is spent.
	err = a.RenewNow(false)
	var r *RenewalRefused
	if !errors.As(err, &r) || r.Limited || !r.After.Equal(a.renewAt(chain)) {
		t.Fatalf("request for a certificate not due: %v, want refused until %v", err, a.renewAt(chain))
	}

	accepted(0, true)
	refused(time.Minute, 10*time.Minute, "at most one requested renewal every 10m0s")
	refused(10*time.Minute-time.Second, 10*time.Minute, "every 10m0s")
	accepted(10*time.Minute, true)

	// While the order runs, nothing else starts; it fails, and the interval doubles.
	a.startRenewal()
	refused(30*time.Minute, -1, "a renewal is under way")
	a.renewed(errors.New("CA said no"))
	refused(29*time.Minute, 30*time.Minute, "every 20m0s after 1 failed in a row (last: CA said no)")
	accepted(30*time.Minute, true)
	a.startRenewal()
	a.renewed(errors.New("CA said no again"))
	refused(69*time.Minute, 70*time.Minute, "every 40m0s after 2 failed")
	accepted(70*time.Minute, true)

	// Many failures: the interval stops growing at its cap.
	for range 20 {
		a.startRenewal()
		a.renewed(errors.New("still no"))
	}
	refused(71*time.Minute, 70*time.Minute+maxRenewRequestInterval, "every 4h0m0s")

	// A success resets it.
	a.startRenewal()
	a.renewed(nil)
	refused(79*time.Minute, 80*time.Minute, "every 10m0s")
	accepted(80*time.Minute, true)

	// Within the renewal window, a request that is not forced renews too, within the limit.
	due := a.renewAt(chain).Sub(start)
	accepted(due, false)
	at(due + time.Minute)
	if err := a.RenewNow(false); !errors.As(err, &r) || !r.Limited {
		t.Fatalf("a second request for a due certificate within the interval: %v, want refused by the limit", err)
	}
}
