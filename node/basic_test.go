package node

import "testing"

func TestInMemoryClusterSigns(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	c.keygen(1)
	for _, coord := range []string{"a", "b", "c"} {
		if err := c.sign(coord, "hello from "+coord); err != nil {
			t.Fatalf("coordinator %s: %v", coord, err)
		}
	}
}
