package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tss"
)

// keylessBackend answers the keyless endpoint: every ECDSA operation an
// authenticated edge sends becomes a threshold signature coordinated here.
type keylessBackend struct{ n *Node }

func (b *keylessBackend) Sign(ctx context.Context, req *keyless.Request) ([]byte, error) {
	id, err := pki.IdentityOf(req.Identity)
	if err != nil {
		b.n.log.Warn().Err(err).Msg("keyless request refused: no tkeyless identity")
		return nil, protocol.ErrKeyNotFound
	}
	// Checked on every request, not only at the handshake: a connection
	// opened before a reload that revoked its identity gets no more
	// signatures.
	if err := b.n.refuseRevoked(req.Identity, "keyless"); err != nil {
		// Like a key not granted: a revoked edge learns nothing.
		return nil, protocol.ErrKeyNotFound
	}
	if id.Role != pki.RoleEdge && id.Role != pki.RoleAdmin {
		b.n.log.Warn().Str("identity", id.Name).Str("role", string(id.Role)).Msg("keyless request refused: only edge and admin identities may sign")
		return nil, protocol.ErrKeyNotFound
	}
	sig, err := b.n.Sign(ctx, SignRequest{
		Key: tss.KeyID(req.SKI), Hash: req.Hash, Digest: req.Digest,
		Edge: id.Name, Authority: req.Authority, RequestID: fmt.Sprint(req.ID),
	})
	switch {
	case errors.Is(err, ErrUnknownKey), errors.Is(err, errNotGranted):
		// Not granted looks like not found: an edge learns nothing about
		// keys it may not use. The signer's log says which it was.
		return nil, protocol.ErrKeyNotFound
	case errors.Is(err, ErrKeyDisabled):
		return nil, keyless.ErrKeyDisabled
	case errors.Is(err, ErrOverloaded):
		// Refused at once, nothing computed (queue full, the identity's
		// share taken, or too little of the edge's budget left for a
		// session here): the edge's client tries another signer if its
		// deadline allows, and the edge reports overloaded, not unable
		// to sign.
		return nil, keyless.ErrOverloaded
	case errors.Is(err, ErrKeySuspended):
		// A key suspended here may still sign through another signer,
		// whose budget this node's aborts did not spend.
		// Internal error makes the edge's client try another signer.
		return nil, protocol.ErrInternal
	case errors.Is(err, errUnauthorized):
		// No (valid) end-to-end authority: the client must be a tkeyless
		// client, or its identity marked legacy.
		return nil, protocol.ErrRemoteConfiguration
	case errors.Is(err, ErrNoQuorum):
		// Checked last: the quorums' errors it wraps may say more (a
		// member refused the authority). The edge's log then says why,
		// and its client tries another signer, which may reach a quorum
		// this one cannot.
		return nil, keyless.ErrNoQuorum
	case err != nil:
		return nil, err
	}
	return sig, nil
}
