package node

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// ErrKeyDisabled is returned for a key an operator disabled.
var ErrKeyDisabled = errors.New("key disabled by the cluster operator")

// keyStates is the kill switch: which keys are disabled, cluster-wide.
//
// A key's state is an admin's signed statement (peerwire.KeyStateStatement)
// carrying a version: every node checks the signature itself and adopts a
// state only if its version is higher than the one it holds (at an equal
// version, disabled wins). Nodes pass states on in their ping replies, so a
// node that was down when an admin disabled a key learns it as soon as it
// is back; but no node can make one up, backdate one or outbid an admin's
// latest word, because it cannot sign as an admin. It is kept in
// data_dir/keystate.json.
type keyStates struct {
	path string
	// verify checks a state's admin signature; it returns the admin.
	verify func(key string, st peerwire.KeyState) (string, error)
	mu     sync.Mutex
	m      map[string]peerwire.KeyState
}

func loadKeyStates(path string, verify func(string, peerwire.KeyState) (string, error)) (*keyStates, error) {
	ks := &keyStates{path: path, verify: verify, m: map[string]peerwire.KeyState{}}
	if err := loadJSON(path, &ks.m); err != nil {
		return nil, fmt.Errorf("key states: %w (every key would be enabled until a peer says otherwise)", err)
	}
	return ks, nil
}

// errStaleKeyState is returned for a valid state no newer than the one
// held: not an error for a peer's ping, but worth telling an operator.
var errStaleKeyState = errors.New("not newer than the key's current state")

// merge adopts st for key if its admin signature verifies and it is newer
// than what this node has, and saves the result. It reports whether
// anything changed.
func (ks *keyStates) merge(key string, st peerwire.KeyState) (bool, error) {
	id, err := tss.ParseKeyID(key)
	if err != nil {
		return false, err
	}
	key = id.String()
	admin, err := ks.verify(key, st)
	if err != nil {
		return false, err
	}
	st.By = admin
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if cur, ok := ks.m[key]; ok {
		newer := st.Version > cur.Version || (st.Version == cur.Version && st.Disabled && !cur.Disabled)
		if !newer {
			return false, fmt.Errorf("key %s state version %d: %w (version %d)", key, st.Version, errStaleKeyState, cur.Version)
		}
	}
	ks.m[key] = st
	return true, saveJSON(ks.path, ks.m)
}

func (ks *keyStates) snapshot() map[string]peerwire.KeyState {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	out := make(map[string]peerwire.KeyState, len(ks.m))
	for k, v := range ks.m {
		// A state kept from before states were signed stays in force here
		// but means nothing to a peer.
		if len(v.Statement) > 0 {
			out[k] = v
		}
	}
	return out
}

func (ks *keyStates) get(key string) peerwire.KeyState {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.m[key]
}

func (ks *keyStates) disabled(key string) bool { return ks.get(key).Disabled }

func (n *Node) keyDisabled(id tss.KeyID) bool { return n.keyState.disabled(id.String()) }

// verifyKeyState checks that st is an admin's statement about key.
func (n *Node) verifyKeyState(key string, st peerwire.KeyState) (string, error) {
	if len(st.Statement) == 0 {
		return "", fmt.Errorf("key %s state is not signed by an admin: refused", key)
	}
	if st.Version == 0 {
		return "", fmt.Errorf("key %s state has version 0: versions start at 1", key)
	}
	c, err := n.verifier.VerifyStatement(st.Statement, peerwire.KeyStateStatement(key, st.Version, st.Disabled), authority.Standing)
	if err != nil {
		return "", fmt.Errorf("key %s state: %w", key, err)
	}
	return c.Identity.Name, nil
}

// adoptKeyStates merges a peer's view of key states into this node's,
// keeping only what an admin signed and is newer.
func (n *Node) adoptKeyStates(from string, states map[string]peerwire.KeyState) {
	for key, st := range states {
		changed, err := n.keyState.merge(key, st)
		switch {
		case errors.Is(err, errStaleKeyState):
		case err != nil:
			n.log.Warn().Err(err).Str("key", key).Str("peer", from).Msg("key state from a peer refused")
		case changed:
			n.keyStateChanged(key, from)
		}
	}
}

func (n *Node) keyStateChanged(key, from string) {
	st := n.keyState.get(key)
	n.log.Warn().Str("key", key).Bool("disabled", st.Disabled).Uint64("version", st.Version).Str("by", st.By).Str("peer", from).Msg("key state changed")
	if id, err := tss.ParseKeyID(key); err == nil && st.Disabled {
		n.pool.drain(id)
		n.sessions.abortPresigns(key, fmt.Errorf("key %s: %w", key, ErrKeyDisabled))
	}
}

// SetKeyState applies an admin's key-state statement on this node and,
// when asked, on every peer it can reach now.
func (n *Node) SetKeyState(ctx context.Context, from string, req *peerwire.SetKeyStateRequest) (*peerwire.SetKeyStateResponse, error) {
	changed, err := n.keyState.merge(req.Key, req.State)
	if err != nil && !errors.Is(err, errStaleKeyState) {
		return nil, err
	}
	if changed {
		n.keyStateChanged(req.Key, from)
	}
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
			_, err := p.client().SetKeyState(cctx, &fwd)
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
	return s.n.SetKeyState(ctx, callerOf(ctx).Name, req)
}

// keyStatePath is where the kill-switch state lives.
func keyStatePath(dataDir string) string { return filepath.Join(dataDir, "keystate.json") }
