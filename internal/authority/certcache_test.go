package authority

import (
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// TestVerifiedChainsRemembered: a certificate verified once is not
// verified again for the same roots while it is valid; a reloaded CA
// (other roots), or a time outside the certificate's validity, verifies it
// afresh and refuses what does not pass.
func TestVerifiedChainsRemembered(t *testing.T) {
	s, v := testSetup(t, pki.RoleEdge)
	req := testRequest()
	a, err := s.Sign(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(a, req); err != nil {
		t.Fatal(err)
	}
	if len(v.chains.entries) != 1 {
		t.Fatalf("%d certificates remembered after one verification, want 1", len(v.chains.entries))
	}
	// The same certificate again: answered from the cache, with the same
	// identity.
	if id, _, ok := v.chains.get(v.currentRoots(), s.Cert.Raw, time.Now()); !ok || id.Name != "id-edge" {
		t.Fatalf("cached: %v %+v", ok, id)
	}
	// Past the certificate's end, the cache does not answer.
	if _, _, ok := v.chains.get(v.currentRoots(), s.Cert.Raw, s.Cert.NotAfter.Add(time.Second)); ok {
		t.Fatal("the cache answered for a time the certificate is not valid at")
	}
	// Another cluster's CA, swapped in by a reload: the edge's certificate
	// is refused, although it verified under the old roots.
	_, stranger := testSetup(t, pki.RoleEdge)
	v.SetRoots(stranger.Roots)
	if _, err := v.Verify(a, req); err == nil || !strings.Contains(err.Error(), "cluster CA") {
		t.Fatalf("after the CA changed: %v", err)
	}
}
