package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// ErrKeyDisabled is returned for a key an operator disabled.
var ErrKeyDisabled = errors.New("key disabled by the cluster operator")

// keyStates is the kill switch: which keys are disabled, cluster-wide.
// Each state carries when it was set, and nodes adopt a newer state from
// any peer they ping, so a node that was down when an operator disabled a
// key learns it as soon as it is back. It is kept in data_dir/keystate.json.
type keyStates struct {
	path string
	mu   sync.Mutex
	m    map[string]peerwire.KeyState
}

func loadKeyStates(path string) (*keyStates, error) {
	ks := &keyStates{path: path, m: map[string]peerwire.KeyState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ks, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read key states: %w", err)
	}
	if err := json.Unmarshal(b, &ks.m); err != nil {
		return nil, fmt.Errorf("key states %s are corrupt; fix or remove the file (every key would then be enabled until a peer says otherwise): %w", path, err)
	}
	return ks, nil
}

// merge adopts st for key if it is newer than what this node has, and
// saves the result. It reports whether anything changed.
func (ks *keyStates) merge(key string, st peerwire.KeyState) (bool, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if cur, ok := ks.m[key]; ok && !st.Changed.After(cur.Changed) {
		return false, nil
	}
	ks.m[key] = st
	b, err := json.MarshalIndent(ks.m, "", "  ")
	if err != nil {
		return true, err
	}
	tmp := ks.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return true, err
	}
	return true, os.Rename(tmp, ks.path)
}

func (ks *keyStates) snapshot() map[string]peerwire.KeyState {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	out := make(map[string]peerwire.KeyState, len(ks.m))
	for k, v := range ks.m {
		out[k] = v
	}
	return out
}

func (ks *keyStates) disabled(key string) bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.m[key].Disabled
}

func (n *Node) keyDisabled(id tss.KeyID) bool { return n.keyState.disabled(id.String()) }

// adoptKeyStates merges a peer's view of key states into this node's.
func (n *Node) adoptKeyStates(from string, states map[string]peerwire.KeyState) {
	for key, st := range states {
		changed, err := n.keyState.merge(key, st)
		if err != nil {
			n.log.Error().Err(err).Str("key", key).Msg("could not save key state")
		}
		if changed {
			n.log.Warn().Str("key", key).Bool("disabled", st.Disabled).Str("by", st.By).Str("peer", from).Msg("key state changed")
		}
	}
}

// SetKeyState disables or re-enables a key on this node and, when asked,
// on every peer it can reach now.
func (n *Node) SetKeyState(ctx context.Context, req *peerwire.SetKeyStateRequest) (*peerwire.SetKeyStateResponse, error) {
	if _, err := tss.ParseKeyID(req.Key); err != nil {
		return nil, err
	}
	if req.State.Changed.IsZero() {
		req.State.Changed = time.Now()
	}
	n.adoptKeyStates(n.cfg.Name, map[string]peerwire.KeyState{req.Key: req.State})
	resp := &peerwire.SetKeyStateResponse{Applied: []string{n.cfg.Name}}
	if !req.Propagate {
		return resp, nil
	}
	fwd := *req
	fwd.Propagate = false
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range n.peers {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			_, err := p.client.SetKeyState(cctx, &fwd)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				resp.Unreachable = append(resp.Unreachable, p.name)
			} else {
				resp.Applied = append(resp.Applied, p.name)
			}
		})
	}
	wg.Wait()
	return resp, nil
}

func (s *peerService) SetKeyState(ctx context.Context, req *peerwire.SetKeyStateRequest) (*peerwire.SetKeyStateResponse, error) {
	caller := callerOf(ctx)
	req.State.By = caller.Name
	return s.n.SetKeyState(ctx, req)
}

// keyStatePath is where the kill-switch state lives.
func keyStatePath(dataDir string) string { return filepath.Join(dataDir, "keystate.json") }
