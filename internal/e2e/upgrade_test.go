package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

var (
	nextOnce sync.Once
	nextBin  string
	nextErr  error
)

// nextSignerBinary builds the signer with the peerwire_next build tag: a
// node of the next protocol version (internal/peerwire/version_next.go),
// which speaks up to the plain build's version + 1 and, at it, sends a field the plain build's
// schema does not know. It stands for the next release, built from this
// same tree, so the test needs no other commit or network.
func nextSignerBinary(t *testing.T) string {
	t.Helper()
	nextOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tkeyless-e2e-next")
		if err != nil {
			nextErr = err
			return
		}
		nextBin = filepath.Join(dir, "signer")
		cmd := exec.Command("go", "build", "-tags", "peerwire_next", "-o", nextBin, "github.com/tkeyless/tkeyless/cmd/signer")
		cmd.Stderr = os.Stderr
		nextErr = cmd.Run()
	})
	if nextErr != nil {
		t.Fatalf("build next-version signer: %v", nextErr)
	}
	return nextBin
}

// signLog is what the background signer saw: every attempt's outcome.
type signLog struct {
	mu       sync.Mutex
	ok, fail int
	errs     []string
	lastOK   time.Time
	maxGap   time.Duration // longest time without a signature
}

func (l *signLog) record(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if err != nil {
		l.fail++
		l.errs = append(l.errs, err.Error())
		return
	}
	l.ok++
	l.maxGap = max(l.maxGap, now.Sub(l.lastOK))
	l.lastOK = now
}

// snapshot copies the counts and errors under the lock, so a reader never
// races the background signer's appends.
func (l *signLog) snapshot() (ok, fail int, errs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.fail, append([]string(nil), l.errs...)
}

// plainVersion is the protocol version of the plain build, which the
// peerwire_next build follows.
const plainVersion = 4

// peerVersions is each peer's link version as sn's /status reports it.
func peerVersions(t *testing.T, sn *signerNode) map[string]int {
	out := map[string]int{}
	for _, p := range nodeStatus(t, sn).Peers {
		out[p.Name] = p.Version
	}
	return out
}

// TestRollingUpgrade upgrades every node of a (1,3) cluster, one at a
// time, from the plain build (protocol version 4) to the next one (5),
// while a client signs without pause. Each restart may cost the request
// in flight on the restarted node, nothing more (the client fails over);
// signing never stops; a mixed pair speaks 3 and an upgraded pair 4, and
// every node coordinates a signature in each state of the cluster. Last,
// one node is rolled back to the plain build, and the cluster still signs.
func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	if peerwire.Version != plainVersion {
		t.Skip("this test upgrades plain builds (version 4) to peerwire_next ones (5); it is built with another tag")
	}
	next := nextSignerBinary(t)
	// Rounds wait up to 10 s for a peer (2 s by default): the test's two
	// clients and the restarts share two loaded cores, and a stall here
	// would be blamed on the load, not on the upgrade.
	c := startClusterWith(t, 1, 3, "stall_timeout: 10s\n")
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, err := protocol.GetSKI(pub)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	// signVia signs once through the given keyless endpoints.
	signVia := func(kc *keyless.Client, msg string) error {
		d := sha256.Sum256([]byte(msg))
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		if err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			return fmt.Errorf("signature on %q does not verify", msg)
		}
		return nil
	}
	clientOf := func(addrs ...string) *keyless.Client {
		kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: addrs, TLS: tc.Clone(), Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kc.Close() })
		return kc
	}
	// everyCoordinates has each node coordinate one signature, so that
	// every pairing of builds present signs together.
	everyCoordinates := func(state string) {
		t.Helper()
		for _, sn := range c.nodes {
			if err := signVia(clientOf(sn.keylessAddr), state+" via "+sn.name); err != nil {
				t.Fatalf("%s: %s could not coordinate a signature: %v", state, sn.name, err)
			}
		}
	}
	everyCoordinates("before the upgrade")

	// The client an edge would have: every node, failover between them.
	var log signLog
	log.lastOK = time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	kc := clientOf(c.keylessAddrs()...)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			log.record(signVia(kc, fmt.Sprintf("rolling %d", i)))
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	// progress waits until the background client has signed n more times.
	progress := func(what string, n int) {
		t.Helper()
		from, _, _ := log.snapshot()
		reached := false
		// waitFor's own message says only that time ran out; this says
		// what the client saw meanwhile (deferred calls run on t.Fatal).
		defer func() {
			if !reached {
				ok, fail, errs := log.snapshot()
				t.Logf("%s: no %d signatures in 2 minutes (%d ok, %d failed: %v)", what, n, ok, fail, errs)
			}
		}()
		waitFor(t, 2*time.Minute, func() bool {
			ok, _, _ := log.snapshot()
			reached = ok >= from+n
			return reached
		})
	}
	progress("before the upgrade", 2)

	upgraded := map[string]bool{}
	restart := func(sn *signerNode, path string, isNext bool) {
		t.Helper()
		sn.proc.stop()
		c.startNodeBinary(t, sn, path, nil)
		upgraded[sn.name] = isNext
		// Every node's link to every other settles at the highest version
		// both ends speak: 5 between upgraded nodes, 4 otherwise.
		waitFor(t, time.Minute, func() bool {
			for _, x := range c.nodes {
				for peer, v := range peerVersions(t, x) {
					want := plainVersion
					if upgraded[x.name] && upgraded[peer] {
						want = plainVersion + 1
					}
					if v != want {
						return false
					}
				}
			}
			return true
		})
	}
	for i, sn := range c.nodes {
		restart(sn, next, true)
		state := fmt.Sprintf("%d of 3 upgraded", i+1)
		progress(state, 2)
		everyCoordinates(state)
	}
	// An operator who rolls one node back (its peers have negotiated 5
	// with it, and learn otherwise at their next call) keeps signing too.
	restarts := len(c.nodes) + 1
	restart(c.nodes[2], filepath.Join(binaries(t), "signer"), false)
	progress("c rolled back", 2)
	everyCoordinates("c rolled back")
	close(stop)
	<-done

	ok, fail, errs := log.snapshot()
	t.Logf("rolling upgrade: %d signatures, %d failed, longest gap %v", ok, fail, log.maxGap.Round(time.Millisecond))
	// A stopped node finishes its sessions before it exits and the client
	// fails over to the others, so a restart costs at most the one request
	// that raced it.
	if fail > restarts {
		t.Errorf("%d signatures failed during %d restarts (want at most one each): %v", fail, restarts, errs)
	}
	// Signing never stopped: no gap between two signatures is as long as
	// a node's restart plus a request's deadline.
	if log.maxGap > 40*time.Second {
		t.Errorf("signing stopped for %v during the upgrade", log.maxGap)
	}
}
