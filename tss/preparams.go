package tss

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
)

// PreParams are a node's Paillier key and range-proof parameters (two safe
// primes each). Generating them takes 10–30 s of CPU on a small machine, so
// a node makes them once and keeps them. They are secret.
type PreParams struct {
	p keygen.LocalPreParams
}

// GeneratePreParams finds new pre-parameters. progress, if not nil, is
// called about once a second with the time spent so far, so a CLI can show
// that the wait is expected.
func GeneratePreParams(ctx context.Context, progress func(elapsed time.Duration)) (*PreParams, error) {
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	if progress != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					progress(time.Since(start))
				}
			}
		}()
	}
	p, err := keygen.GeneratePreParamsWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("generate pre-parameters: %w", err)
	}
	return &PreParams{p: *p}, nil
}

// MarshalJSON encodes the pre-parameters for storage.
func (p *PreParams) MarshalJSON() ([]byte, error) { return json.Marshal(p.p) }

// UnmarshalJSON decodes and validates stored pre-parameters.
func (p *PreParams) UnmarshalJSON(b []byte) error {
	var lp keygen.LocalPreParams
	if err := json.Unmarshal(b, &lp); err != nil {
		return err
	}
	if !lp.ValidateWithProof() {
		return errors.New("pre-parameters fail validation (incomplete, or made by an incompatible tss-lib)")
	}
	p.p = lp
	return nil
}

// LoadPreParams reads pre-parameters saved by SavePreParams, decrypting
// them with s (nil: plaintext test fixtures only).
func LoadPreParams(path string, s *Sealer) (*PreParams, error) {
	sealed, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load pre-parameters: %w", err)
	}
	b, err := s.open(path, sealed)
	if err != nil {
		return nil, fmt.Errorf("load pre-parameters: %w", err)
	}
	var p PreParams
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("load pre-parameters %s: file is truncated or corrupt: %w", path, err)
	}
	return &p, nil
}

// SavePreParams writes pre-parameters to path, encrypted with s and
// readable by the owner only.
func SavePreParams(path string, p *PreParams, s *Sealer) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode pre-parameters: %w", err)
	}
	sealed, err := s.seal(b)
	if err != nil {
		return fmt.Errorf("save pre-parameters: %w", err)
	}
	return writeFileAtomic(path, sealed)
}

// LoadOrGeneratePreParams loads the pre-parameters cached at path, or
// generates and caches them when the file does not exist yet.
func LoadOrGeneratePreParams(ctx context.Context, path string, s *Sealer, progress func(time.Duration)) (*PreParams, bool, error) {
	p, err := LoadPreParams(path, s)
	if err == nil {
		return p, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	p, err = GeneratePreParams(ctx, progress)
	if err != nil {
		return nil, false, err
	}
	if err := SavePreParams(path, p, s); err != nil {
		return nil, false, err
	}
	return p, true, nil
}
