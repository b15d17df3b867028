package node

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
)

// testInterceptorRoles: who may call what on a node's peer endpoint, by
// the role in the caller's certificate. Only nodes take part in sessions;
// ceremonies, key states and resharing outcomes (which carry an admin's
// signed statement or a proof every member checks) may come from a node or
// an admin; readmitting a peer and resuming a key are an admin's alone; a
// private key to import comes only from an admin or the node's own
// identity; an edge may call nothing here.
func testInterceptorRoles(t *testing.T, c *testCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sid := peerwire.NewSessionID()
	calls := []struct {
		method string
		call   func(*peerwire.Client) error
		node   bool // another node may call it
		admin  bool
		self   bool // the node's own identity may call it
	}{
		{"Ping", func(p *peerwire.Client) error {
			_, err := p.Ping(ctx, &peerwire.PingRequest{Version: peerwire.Version})
			return err
		}, true, true, true},
		{"Status", func(p *peerwire.Client) error { _, err := p.Status(ctx, &peerwire.StatusRequest{}); return err }, true, true, true},
		{"Prepare", func(p *peerwire.Client) error { _, err := p.Prepare(ctx, &peerwire.PrepareRequest{}); return err }, true, false, true},
		{"Run", func(p *peerwire.Client) error { _, err := p.Run(ctx, &peerwire.RunRequest{Session: sid}); return err }, true, false, true},
		{"Deliver", func(p *peerwire.Client) error { _, err := p.Deliver(ctx, &peerwire.Envelope{}); return err }, true, false, true},
		{"Echo", func(p *peerwire.Client) error { _, err := p.Echo(ctx, &peerwire.Echo{}); return err }, true, false, true},
		{"FinishPresign", func(p *peerwire.Client) error {
			_, err := p.FinishPresign(ctx, &peerwire.FinishPresignRequest{Session: sid})
			return err
		}, true, false, true},
		{"ReshareOutcome", func(p *peerwire.Client) error {
			_, err := p.ReshareOutcome(ctx, &peerwire.ReshareOutcomeRequest{Session: sid, Key: "zz"})
			return err
		}, true, false, true},
		{"KeygenCeremony", func(p *peerwire.Client) error {
			_, err := p.KeygenCeremony(ctx, &peerwire.KeygenCeremonyRequest{Threshold: 0, Parties: []string{"a", "b", "c"}})
			return err
		}, true, true, true},
		{"ReshareCeremony", func(p *peerwire.Client) error {
			_, err := p.ReshareCeremony(ctx, &peerwire.ReshareCeremonyRequest{Key: "zz"})
			return err
		}, true, true, true},
		{"SetKeyState", func(p *peerwire.Client) error {
			_, err := p.SetKeyState(ctx, &peerwire.SetKeyStateRequest{Key: "zz"})
			return err
		}, true, true, true},
		{"FinishReshare", func(p *peerwire.Client) error {
			_, err := p.FinishReshare(ctx, &peerwire.FinishReshareRequest{Key: "zz"})
			return err
		}, true, true, true},
		{"ImportCeremony", func(p *peerwire.Client) error {
			_, err := p.ImportCeremony(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: []byte("not a key"), Threshold: 1})
			return err
		}, false, true, true},
		{"Readmit", func(p *peerwire.Client) error {
			_, err := p.Readmit(ctx, &peerwire.ReadmitRequest{Peer: "nobody"})
			return err
		}, false, true, false},
		{"ResumeKey", func(p *peerwire.Client) error {
			_, err := p.ResumeKey(ctx, &peerwire.ResumeKeyRequest{Key: "zz"})
			return err
		}, false, true, false},
	}
	callers := []struct {
		name    string
		client  *peerwire.Client
		allowed func(method int) bool
	}{
		{"node b", c.peerClient("b", "a"), func(i int) bool { return calls[i].node }},
		{"node a itself", c.peerClient("a", "a"), func(i int) bool { return calls[i].self }},
		{"the admin", c.adminClient("a"), func(i int) bool { return calls[i].admin }},
		{"an edge", c.clientAs("edge", "a"), func(int) bool { return false }},
	}
	for i, m := range calls {
		for _, caller := range callers {
			err := m.call(caller.client)
			denied := status.Code(err) == codes.PermissionDenied
			if allowed := caller.allowed(i); denied == allowed {
				t.Errorf("%s calling %s: %v (allowed: %t)", caller.name, m.method, err, allowed)
			}
		}
	}
}
