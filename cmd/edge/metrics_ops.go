package main

import (
	"crypto/x509"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tkeyless/tkeyless/internal/version"
	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// opsMetrics are the series an operator watches across deployments, reloads and signer
// outages: which build runs, when the keyless identity expires and whether each signer answers.
type opsMetrics struct {
	buildInfo        *prometheus.GaugeVec
	identityReloads  *prometheus.CounterVec
	identityNotAfter prometheus.Gauge
	signerUp         *prometheus.GaugeVec
	signerLastError  *prometheus.GaugeVec
}

func newOpsMetrics(reg *prometheus.Registry) opsMetrics {
	m := opsMetrics{
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tkeyless_edge_build_info",
			Help: "Always 1; the labels say which build runs: module version, VCS commit, Go toolchain.",
		}, []string{"version", "commit", "go"}),
		identityReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_edge_keyless_identity_reloads_total",
			Help: "Reloads (SIGHUP) of the edge's keyless identity (--keyless-cert, --keyless-key, --keyless-ca), by outcome (refused: a file was missing or bad; the previous identity stays).",
		}, []string{"outcome"}),
		identityNotAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tkeyless_edge_keyless_identity_not_after_seconds",
			Help: "Expiry of the client certificate the edge presents to the signers, Unix seconds.",
		}),
		signerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tkeyless_edge_signer_up",
			Help: "1 if the signer answered the edge's last liveness ping (every --signer-probe-interval), 0 if not; by signer address.",
		}, []string{"signer"}),
		signerLastError: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tkeyless_edge_signer_last_error_timestamp_seconds",
			Help: "When the signer last failed a ping or answered a signature with an error, Unix seconds (0: never); by signer address.",
		}, []string{"signer"}),
	}
	v := version.Get()
	commit := v.Commit
	if v.Dirty {
		commit += "-dirty"
	}
	m.buildInfo.WithLabelValues(v.Version, commit, v.Go).Set(1)
	for _, r := range []string{"ok", "refused"} {
		m.identityReloads.WithLabelValues(r)
	}
	reg.MustRegister(m.buildInfo, m.identityReloads, m.identityNotAfter, m.signerUp, m.signerLastError)
	return m
}

// servedChains sets the expiry series to exactly the chains now served.
func (m *edgeMetrics) servedChains(chains []*tlsglue.Chain) {
	m.certNotAfter.Reset()
	for i, c := range chains {
		m.certNotAfter.WithLabelValues(chainName(c, i)).Set(float64(c.Leaf.NotAfter.Unix()))
	}
}

// chainName names a chain in metrics: the first name its leaf covers.
func chainName(c *tlsglue.Chain, i int) string {
	if names := leafNames(c.Leaf); len(names) > 0 {
		return names[0]
	}
	return "chain-" + strconv.Itoa(i)
}

func (m *edgeMetrics) keylessIdentity(id *x509.Certificate) {
	if id != nil {
		m.identityNotAfter.Set(float64(id.NotAfter.Unix()))
	}
}

// signerAnswered records a liveness ping's outcome for one signer.
func (m *edgeMetrics) signerAnswered(addr string, err error, at time.Time) {
	if err == nil {
		m.signerUp.WithLabelValues(addr).Set(1)
		m.signerLastError.WithLabelValues(addr) // shows at 0 from the first ping
		return
	}
	m.signerUp.WithLabelValues(addr).Set(0)
	m.signerErrorAt(addr, at)
}

// signError records the signer named by a handshake signature's error, if one answered with
// an error (keyless.RemoteError names it; a connection failure shows at the next ping).
func (m *edgeMetrics) signError(ev tlsglue.SignEvent) {
	var remote *keyless.RemoteError
	if errors.As(ev.Err, &remote) && remote.Endpoint != "" {
		m.signerErrorAt(remote.Endpoint, time.Now())
	}
}

func (m *edgeMetrics) signerErrorAt(addr string, at time.Time) {
	m.signerLastError.WithLabelValues(addr).Set(float64(at.UnixNano()) / 1e9)
}
