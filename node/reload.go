package node

import (
	"bytes"
	"fmt"
	"reflect"
	"time"
)

// Reload puts in force the reloadable settings of cfg, a configuration
// freshly read from the node's file: its certificate and key (tls.cert,
// tls.key), the cluster CA (tls.ca), the access list (access) and the
// revoked identities (revocation). `signer serve` calls it on SIGHUP.
//
// Everything is read and checked before anything changes: a reload that
// fails (a file missing or bad, a key not matching its certificate, a
// certificate for another node name or not issued by the CA, a CRL that
// does not parse or verify) returns the error, counts it, and leaves the
// previous settings serving. Other settings changed in cfg take effect at
// the next restart; Reload logs that they were not applied.
func (n *Node) Reload(cfg Config) error {
	err := n.reload(cfg)
	if err != nil {
		n.ReloadFailed(err)
		return fmt.Errorf("reload: %w", err)
	}
	return nil
}

// ReloadFailed logs and counts a reload that failed before Reload could
// be called (the configuration file itself did not load).
func (n *Node) ReloadFailed(err error) {
	n.metrics.reloads.WithLabelValues("failed").Inc()
	n.log.Error().Err(err).Msg("reload failed; the previous certificate, CA, access list and revocations stay in force")
}

func (n *Node) reload(cfg Config) error {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Name != n.cfg.Name {
		return fmt.Errorf("name changed from %q to %q: a node's name is bound to its shares and cannot change while it runs", n.cfg.Name, cfg.Name)
	}
	c, err := n.loadTrust(cfg)
	if err != nil {
		return err
	}
	old := n.current()
	n.trust.Store(c)
	n.verifier.SetRoots(c.pool)
	if !bytes.Equal(old.cert.Leaf.Raw, c.cert.Leaf.Raw) {
		n.redialPeers()
	}
	now := time.Now()
	n.metrics.reloads.WithLabelValues("ok").Inc()
	n.metrics.lastReload.Set(float64(now.Unix()))
	ev := n.log.Info().Str("cert_serial", serialHex(c.cert.Leaf)).Time("cert_not_after", c.cert.Leaf.NotAfter).
		Int("ca_certs", len(c.cas)).Int("grants", len(c.access)).Int("revoked", c.revoked.size())
	if ignored := unreloadable(n.cfg, cfg); len(ignored) > 0 {
		ev = ev.Strs("not_applied", ignored)
	}
	ev.Msg("configuration reloaded")
	n.warnStaleCRL(c)
	return nil
}

// warnStaleCRL logs a CRL past its next update: still applied, but the CA
// has likely published a newer one.
func (n *Node) warnStaleCRL(c *trustSet) {
	if c.revoked != nil && !c.revoked.stale.IsZero() {
		n.log.Warn().Time("next_update", c.revoked.stale).Msg("the CRL is past its next update; it is still applied, but fetch the CA's current CRL and reload")
	}
}

// unreloadable names the settings (YAML keys) that differ between old and
// new but take effect only at a restart.
func unreloadable(old, new Config) []string {
	var out []string
	ov, nv := reflect.ValueOf(old), reflect.ValueOf(new)
	t := ov.Type()
	for i := range t.NumField() {
		switch t.Field(i).Name {
		case "TLS", "Access", "Revocation":
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, t.Field(i).Tag.Get("yaml"))
		}
	}
	return out
}

// redialPeers replaces every peer connection with a new one, made with this
// node's current certificate. A peer checks the signatures on this node's
// broadcasts against the certificate of the connection they arrive on, and
// gRPC keeps a connection for as long as it works: without a redial, a new
// key would sign what peers check against the old one. Calls under way on
// an old connection get a session's time to finish before it is closed.
func (n *Node) redialPeers() {
	grace := time.Duration(n.cfg.SignTimeout)
	for _, p := range n.cfg.Peers {
		pc, ok := n.peers[p.Name]
		if !ok {
			continue
		}
		link, err := n.dial(p)
		if err != nil {
			n.log.Error().Err(err).Str("peer", p.Name).Msg("redial with the new certificate failed; the old connection stays")
			continue
		}
		old := pc.link.Swap(link)
		time.AfterFunc(grace, func() { _ = old.conn.Close() })
	}
	n.log.Info().Int("peers", len(n.peers)).Msg("peer connections redialled with the new certificate")
}
