package wan

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the signer and the edge once per test run.
func binaries(t *testing.T) (bin, repo string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Join(filepath.Dir(file), "..", "..", "..")
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "tkeyless-wan-bin"); buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "github.com/tkeyless/tkeyless/cmd/signer", "github.com/tkeyless/tkeyless/cmd/edge")
		cmd.Stderr = os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return binDir, repo
}

// TestWANPoint measures one point of the bench: (1,2), presigned, 20 ms on
// every link. The handshake cannot beat the round trips the protocol
// makes in sequence, so a p50 under the model's network part would mean
// the links are not where the harness says (a config bypassing a proxy).
func TestWANPoint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	bin, repo := binaries(t)
	ctx := context.Background()
	const rtt, depth = 20 * time.Millisecond, 3
	d, err := Deploy(ctx, bin, repo, 1, 2, depth, map[Class]Shape{EdgeLinks: {RTT: rtt}, PeerLinks: {RTT: rtt}}, 60*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := len(d.Net.Links(PeerLinks)); got != 2 {
		t.Fatalf("%d signer→signer links, want 2 (a→b, b→a)", got)
	}
	if got := len(d.Net.Links(EdgeLinks)); got != 2 {
		t.Fatalf("%d edge→signer links, want 2", got)
	}
	waitPools(t, d, depth)
	r, err := d.Handshakes(ctx, depth-1, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors > 0 || r.Full != depth-1 {
		t.Fatalf("%d errors (%v), %d full handshakes of %d", r.Errors, r.ByCause, r.Full, depth-1)
	}
	floor := time.Duration(Rounds(1, 2, true) * float64(rtt))
	t.Logf("p50 %v; model network part %v", r.FullTotal.P50, floor)
	if r.FullTotal.P50 < floor {
		t.Errorf("p50 %v is below the %v the links alone must cost", r.FullTotal.P50, floor)
	}
}

// TestHalfOpenSignerLink: in a (1,3) cluster, everything signer b sends
// to the other signers vanishes from some point on, while it still
// receives (a half-open link: no reset, no error, only silence). A full
// handshake must still complete, well within its deadline, through a
// quorum without b; and so must the next ones.
func TestHalfOpenSignerLink(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	bin, repo := binaries(t)
	ctx := context.Background()
	const signTimeout = 45 * time.Second
	// A silent member is blamed after 3 s here: long enough for a busy
	// machine's Paillier rounds, short enough to tell failover from the
	// deadline.
	d, err := Deploy(ctx, bin, repo, 1, 3, 0, nil, signTimeout, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if r, err := d.Handshakes(ctx, 1, signTimeout); err != nil || r.Errors > 0 {
		t.Fatalf("before the fault: %v %v", err, r.ByCause)
	}
	// A few kilobytes more, then silence: b's next session dies part-way
	// (GG18's first messages alone are larger), not before it starts.
	if err := d.Net.Mute(PeerLinks, "b", 4096); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := d.Handshakes(ctx, 3, signTimeout+5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors > 0 {
		t.Fatalf("with b's links half-open: %d of %d handshakes failed: %v", r.Errors, r.Requests, r.ByCause)
	}
	if r.FullTotal.Max >= signTimeout {
		t.Errorf("slowest handshake %v: a half-open member held it to the deadline (%v)", r.FullTotal.Max, signTimeout)
	}
	t.Logf("3 handshakes with b muted in %v (p50 %v, max %v)", time.Since(start), r.FullTotal.P50, r.FullTotal.Max)
}

func waitPools(t *testing.T, d *Deployment, depth int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for !d.Cluster.PresignReady(depth) {
		if time.Now().After(deadline) {
			t.Fatalf("presignature pools did not reach %d in 5 minutes", depth)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
