package tss

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
)

// Import moves an existing P-256 private key — a plain Keyless server's —
// into the cluster, so its certificates keep working: the importer runs a
// one-party old committee holding the whole key (t=0, n=1) and reshares it
// into the cluster's (t, n). The cluster never sees the whole key, only its
// shares; but the key did exist whole before, and still does wherever the
// original file is. The "never in one place" promise holds only once the
// operator destroys every copy of the original, which the CLI must say.

// ImportConfig is the ReshareConfig of an import: what the cluster's nodes
// run NewReshareSession with (no share; their pre-parameters), while the
// importer runs NewImportSession with the same values.
func ImportConfig(importer string, pub *ecdsa.PublicKey, newParties []string, newThreshold int) ReshareConfig {
	return ReshareConfig{
		PublicKey:    pub,
		OldParties:   []string{importer},
		OldThreshold: 0,
		NewParties:   slices.Clone(newParties),
		NewThreshold: newThreshold,
	}
}

// NewImportSession prepares the importer's side of an import: one old party,
// named importer (the name the cluster's transport authenticates it by),
// dealing key to newParties with threshold newThreshold. The importer may be
// one of newParties — a cluster node that was handed the key — and then also
// runs its new-committee party, for which it needs preParams (nil
// otherwise), and Run returns its new share like any member's. An importer
// outside the new committee gets (nil, nil) once every new member
// acknowledged its share.
//
// The session keeps its own copy of the secret scalar and zeroes it when Run
// returns; key itself is the caller's to drop. It cannot be zeroed from here
// (crypto/ecdsa keeps private copies), which is one more reason the original
// must be destroyed where it is stored.
func NewImportSession(key *ecdsa.PrivateKey, importer string, newParties []string, newThreshold int, preParams *PreParams, outbox Outbox) (*ReshareSession, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return nil, errors.New("import: want a P-256 private key")
	}
	cfg := ImportConfig(importer, &key.PublicKey, newParties, newThreshold)
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	raw, err := key.Bytes()
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	d := new(big.Int).SetBytes(raw)
	clear(raw)
	if d.Sign() <= 0 || d.Cmp(curve.Params().N) >= 0 {
		zeroInt(d)
		return nil, errors.New("import: private scalar out of range")
	}
	pub := crypto.ScalarBaseMult(curve, d)
	if pub.X().Cmp(key.X) != 0 || pub.Y().Cmp(key.Y) != 0 {
		zeroInt(d)
		return nil, errors.New("import: private key does not match its public key")
	}
	// A one-party committee: w = Xi (no Lagrange factor), so only Xi, the
	// party key and the public values are real. tss-lib hashes NTilde, h1,
	// h2 into its session id and reads nothing else of them here.
	in := keygen.NewLocalPartySaveData(1)
	in.Xi = d
	in.ShareID = oldCommitteeKey(importer)
	in.Ks[0] = in.ShareID
	in.BigXj[0] = pub
	in.NTildej[0], in.H1j[0], in.H2j[0] = new(big.Int), new(big.Int), new(big.Int)
	in.ECDSAPub = pub
	s, err := newReshareSession("import", cfg, importer, &in, preParams, outbox)
	if err != nil {
		zeroInt(d)
		return nil, err
	}
	s.dealt = d
	return s, nil
}
