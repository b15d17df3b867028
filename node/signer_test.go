package node

import "testing"

// TestSignerRules runs the rules that need a cluster key on one in-memory
// cluster of three (t=1: any two sign), so that the key is generated once.
// Each rule is a subtest that leaves the cluster as it found it (no
// conviction, suspension, cool-down or disabled key left behind); the
// ones that stop a node come last. The rules themselves live beside the
// code they test (peerservice_test.go, keyless_test.go, …).
//
// Access: "edge" may use every key with its own authority; "legacy" without
// one. The abort budget is 3.
func TestSignerRules(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"}, func(cfg *Config) {
		cfg.AbortBudget = 3
		cfg.Access = []Grant{{Identity: "edge", Keys: []string{"*"}}, {Identity: "admin", Keys: []string{"*"}}, {Identity: "legacy", Keys: []string{"*"}, Legacy: true}}
	})
	c.keygen(1)
	for _, rule := range []struct {
		name string
		test func(*testing.T, *testCluster)
	}{
		{"InterceptorRoles", testInterceptorRoles},
		{"KeylessErrorCodes", testKeylessErrorCodes},
		{"PrepareChecksSignRequest", testPrepareChecksSignRequest},
		{"RunOnlyByCoordinator", testRunOnlyByCoordinator},
		{"PresignRefusedWhenDepthZero", testPresignRefusedWhenDepthZero},
		{"QuorumSkipsConvictedPeer", testQuorumSkipsConvictedPeer},
		{"ReadmitNeedsAdmin", testReadmitNeedsAdmin},
		{"CoordinatorRetriesWithoutRefusingMember", testCoordinatorRetriesWithoutRefusingMember},
		{"AuthoritySpentAfterRound1", testAuthoritySpentAfterRound1},
		{"AbortBudgetSuspendsKey", testAbortBudgetSuspendsKeyInCluster},
		{"ResumeKeyNeedsAdmin", testResumeKeyNeedsAdmin},
		{"CeremonyRefusals", testCeremonyRefusals},
		{"ReshareDiscardRules", testReshareDiscardRules},
		{"PendingReshareCommitsOnEveryConfirmation", testPendingReshareCommits},
		{"BackupRestore", testBackupRestore},
		{"NoQuorumWithoutHealthyMembers", testNoQuorumWithoutHealthyMembers},
	} {
		t.Run(rule.name, func(t *testing.T) {
			t.Cleanup(func() {
				for name := range c.stop {
					c.resetHealth(name)
				}
			})
			rule.test(t, c)
		})
	}
}
