package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/node"
)

// adminFlags name an admin identity: a certificate and key issued by the
// cluster CA with --role admin. Ceremonies and key-state changes carry its
// signature, which every node checks on its own, and the decisions that
// undo an alarm (readmitting a convicted peer, resuming a suspended key,
// discarding a staged share) are calls only it may make. Keep it off the
// signer hosts: a node that held it could do all of that by itself.
type adminFlags struct{ cert, key string }

func (a *adminFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&a.cert, "admin-cert", os.Getenv("TKEYLESS_ADMIN_CERT"), "admin identity certificate (`signer pki issue --role admin`); default $TKEYLESS_ADMIN_CERT")
	cmd.Flags().StringVar(&a.key, "admin-key", os.Getenv("TKEYLESS_ADMIN_KEY"), "admin identity private key; default $TKEYLESS_ADMIN_KEY")
}

// pair loads the admin identity and checks it is one.
func (a *adminFlags) pair() (tls.Certificate, error) {
	if a.cert == "" || a.key == "" {
		return tls.Certificate{}, errors.New("this command needs an admin identity: --admin-cert and --admin-key (or $TKEYLESS_ADMIN_CERT and $TKEYLESS_ADMIN_KEY); issue one with `signer pki issue --dir PKI --name NAME --role admin`")
	}
	pair, err := tls.LoadX509KeyPair(a.cert, a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("admin identity: %w", err)
	}
	id, err := pki.IdentityOf(pair.Leaf)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("admin identity %s: %w", a.cert, err)
	}
	if id.Role != pki.RoleAdmin {
		return tls.Certificate{}, fmt.Errorf("%s is a %s identity (%q), not an admin one: issue one with `signer pki issue --role admin`", a.cert, id.Role, id.Name)
	}
	return pair, nil
}

// statement signs st as the admin.
func (a *adminFlags) statement(st authority.Statement) ([]byte, error) {
	pair, err := a.pair()
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("admin key cannot sign")
	}
	return (&authority.Signer{Cert: pair.Leaf, Key: key}).SignStatement(st)
}

// dial connects to a node's peer endpoint as the admin.
func (a *adminFlags) dial(cfg node.Config, name, addr string) (*peerwire.Client, func(), error) {
	if _, err := a.pair(); err != nil {
		return nil, nil, err
	}
	return dialAs(cfg.TLS.CA, a.cert, a.key, name, addr)
}

// clusterNodes is this node and its configured peers.
func clusterNodes(cfg node.Config) []node.Peer {
	return append([]node.Peer{{Name: cfg.Name, Addr: cfg.PeerListen}}, cfg.Peers...)
}

// defaultParties is every node of the cluster, sorted, as the node picks
// them when a ceremony names none: the admin signs the same list.
func defaultParties(cfg node.Config) []string {
	var ps []string
	for _, p := range clusterNodes(cfg) {
		ps = append(ps, p.Name)
	}
	slices.Sort(ps)
	return ps
}

// eachNode calls f on every node as the admin, and reports which answered.
func (a *adminFlags) eachNode(ctx context.Context, cfg node.Config, f func(ctx context.Context, name string, c *peerwire.Client) error) error {
	var errs []error
	for _, t := range clusterNodes(cfg) {
		c, closeFn, err := a.dial(cfg, t.Name, t.Addr)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = f(cctx, t.Name, c)
		cancel()
		closeFn()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", t.Name, oneLine(err.Error()))
			errs = append(errs, fmt.Errorf("%s: %w", t.Name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d nodes did not apply it (run it again when they are up): %w", len(errs), len(clusterNodes(cfg)), errors.Join(errs...))
	}
	return nil
}
