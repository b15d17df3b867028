package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// Keygen coordinates a distributed key generation among req.Parties (all
// configured nodes when empty), any req.Threshold+1 of which will sign.
// req.Authority is an admin's statement over exactly that (every party
// checks it). Every party stores its own share; the key never exists
// whole. It returns the new key's id and public key once every party
// reported the same one.
func (n *Node) Keygen(ctx context.Context, req *peerwire.KeygenCeremonyRequest) (*peerwire.KeygenCeremonyResponse, error) {
	threshold, parties := req.Threshold, slices.Clone(req.Parties)
	if len(parties) == 0 {
		parties = append(parties, n.cfg.Name)
		for _, p := range n.cfg.Peers {
			parties = append(parties, p.Name)
		}
	}
	slices.Sort(parties)
	if threshold < 1 || threshold >= len(parties) {
		return nil, fmt.Errorf("threshold %d with %d parties: want 1 ≤ t < n (t+1 of n sign)", threshold, len(parties))
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.cfg.KeygenTimeout))
	defer cancel()
	pr := &peerwire.PrepareRequest{
		Version: peerwire.Version,
		Session: peerwire.NewSessionID(),
		Kind:    peerwire.KindKeygen,
		Keygen:  &peerwire.KeygenRequest{Threshold: threshold, Parties: parties, Authority: req.Authority},
	}
	start := time.Now()
	// Every party's result is needed here, not only this node's: the key
	// exists only if all of them stored a share of the same public key.
	var mu sync.Mutex
	pubs := map[string][]byte{}
	own, _, err := n.runSessionCollect(ctx, pr, parties, func(member string, r *peerwire.RunResponse) {
		mu.Lock()
		pubs[member] = r.PublicKey
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	for member, pub := range pubs {
		if string(pub) != string(own.PublicKey) {
			return nil, fmt.Errorf("party %s reports a different public key: ceremony failed, discard key", member)
		}
	}
	if len(pubs) != len(parties)-1 {
		return nil, errors.New("not every party reported its public key")
	}
	share, err := n.shareByPub(own.PublicKey)
	if err != nil {
		return nil, err
	}
	n.log.Info().Str("key", share.KeyID().String()).Int("t", threshold).Strs("parties", parties).Int64("dur_ms", time.Since(start).Milliseconds()).Msg("key generation complete")
	return &peerwire.KeygenCeremonyResponse{Key: share.KeyID().String(), PublicKey: own.PublicKey}, nil
}

func (n *Node) shareByPub(pkix []byte) (*tss.Share, error) {
	pub, err := x509.ParsePKIXPublicKey(pkix)
	if err != nil {
		return nil, err
	}
	for _, id := range n.Keys() {
		s, _ := n.share(id)
		if s.PublicKey().Equal(pub) {
			return s, nil
		}
	}
	return nil, errors.New("new key's share not found on this node")
}

// preParamsCache holds this node's pre-parameters: loaded from disk, or
// generated once in the background (10–30 s) and saved.
type preParamsCache struct {
	path   string
	sealer *tss.Sealer

	mu      sync.Mutex
	p       *tss.PreParams
	started time.Time
	err     error
}

func newPreParamsCache(path string, s *tss.Sealer) *preParamsCache {
	return &preParamsCache{path: path, sealer: s}
}

// ensure loads or, in the background, generates the pre-parameters.
func (c *preParamsCache) ensure(ctx context.Context, log zerolog.Logger) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, err := tss.LoadPreParams(c.path, c.sealer); err == nil {
		c.p = p
		return
	}
	c.started = time.Now()
	log.Info().Str("path", c.path).Msg("generating pre-parameters (safe primes); key generation waits for them")
	go func() {
		p, _, err := tss.LoadOrGeneratePreParams(ctx, c.path, c.sealer, func(d time.Duration) {
			if d.Truncate(time.Second)%(10*time.Second) == 0 {
				log.Info().Dur("elapsed", d).Msg("still generating pre-parameters")
			}
		})
		c.mu.Lock()
		defer c.mu.Unlock()
		c.p, c.err = p, err
		if err != nil {
			log.Error().Err(err).Msg("pre-parameters")
			return
		}
		log.Info().Dur("took", time.Since(c.started)).Msg("pre-parameters ready")
	}()
}

func (c *preParamsCache) get() (*tss.PreParams, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.p != nil:
		return c.p, nil
	case c.err != nil:
		return nil, fmt.Errorf("pre-parameters failed: %w", c.err)
	case !c.started.IsZero():
		return nil, fmt.Errorf("pre-parameters still being generated (%s so far); retry when the node logs \"pre-parameters ready\"", time.Since(c.started).Truncate(time.Second))
	default:
		p, err := tss.LoadPreParams(c.path, c.sealer)
		if err != nil {
			return nil, fmt.Errorf("%w (run `signer preparams` on this node first)", err)
		}
		c.p = p
		return p, nil
	}
}

// EnsurePreParams loads this node's pre-parameters, or starts generating
// them in the background if it has none yet.
func (n *Node) EnsurePreParams(ctx context.Context) { n.preParams.ensure(ctx, n.log) }
