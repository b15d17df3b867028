package main

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// shedSignerOverloaded is the shed metric's reason for a handshake the signers refused at once as
// overloaded (keyless.ErrOverloaded): the edge asked, nothing was computed, and no signer could
// take it within the deadline. tlsglue's reasons are the edge's own.
const shedSignerOverloaded = "signer_overloaded"

// edgeMetrics are the edge's Prometheus series, served on --metrics-listen (a private address:
// never on the public TLS port).
type edgeMetrics struct {
	reg          *prometheus.Registry
	handshakes   *prometheus.CounterVec
	failures     prometheus.Counter
	signDuration *prometheus.HistogramVec
	signerErrors prometheus.Counter
	reloads      *prometheus.CounterVec
	certNotAfter *prometheus.GaugeVec // by chain: the first name of its leaf
	shed         *prometheus.CounterVec
	queueTime    prometheus.Histogram
	opsMetrics   // build, identity and per-signer series (metrics_ops.go)
}

// newEdgeMetrics makes the edge's series; shed (not nil) is read for the in-flight and queue
// gauges.
func newEdgeMetrics(shed *tlsglue.Shedder) *edgeMetrics {
	m := &edgeMetrics{
		reg: prometheus.NewRegistry(),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_edge_handshakes_total",
			Help: "Completed TLS handshakes, by kind (full: one signature; resumed: none) and TLS version.",
		}, []string{"kind", "version"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tkeyless_edge_handshake_failures_total",
			Help: "TLS handshakes that failed (signer errors, client errors, timeouts).",
		}),
		signDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tkeyless_edge_sign_duration_seconds",
			Help:    "Time a full handshake waited for its signature, by outcome.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		signerErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tkeyless_edge_signer_errors_total",
			Help: "Handshake signatures the signers did not deliver.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_edge_certificate_reloads_total",
			Help: "Certificate reloads (SIGHUP), by outcome.",
		}, []string{"outcome"}),
		certNotAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tkeyless_edge_certificate_not_after_seconds",
			Help: "Expiry of each served leaf certificate, Unix seconds, by chain (its first name); updated on every reload and renewal.",
		}, []string{"chain"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_edge_handshakes_shed_total",
			Help: "Full handshakes refused for overload, by reason: before any signer was asked (client_budget: the client's prefix is over its budget; client_share: it holds its share of slots and queue; queue_full: every signing slot busy and the queue full; deadline: no slot free in time), or by the signers (signer_overloaded: each signer tried refused it at once as overloaded, or had no time left for a signature).",
		}, []string{"reason"}),
		queueTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tkeyless_edge_sign_queue_seconds",
			Help:    "Time a full handshake waited for a signing slot (--max-signing), shed or not.",
			Buckets: []float64{.0001, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	for _, r := range tlsglue.ShedReasons {
		m.shed.WithLabelValues(string(r)) // every reason shows from the start, at 0
	}
	m.shed.WithLabelValues(shedSignerOverloaded)
	m.reg.MustRegister(m.shed, m.queueTime,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tkeyless_edge_signatures_in_flight",
			Help: "Handshake signatures asked of the signers and not yet answered.",
		}, func() float64 { return float64(shed.InFlight()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tkeyless_edge_signing_slots",
			Help: "Signatures allowed in flight now: --max-signing, less while signatures take longer than --sign-latency-target.",
		}, func() float64 { return float64(shed.Slots()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tkeyless_edge_signatures_queued",
			Help: "Full handshakes waiting for a signing slot.",
		}, func() float64 { return float64(shed.Queued()) }))
	m.reg.MustRegister(m.handshakes, m.failures, m.signDuration, m.signerErrors, m.reloads, m.certNotAfter,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.opsMetrics = newOpsMetrics(m.reg)
	return m
}

// sign records one handshake signature (tlsglue.ServerOptions.OnSign).
func (m *edgeMetrics) sign(ev tlsglue.SignEvent) {
	var shed *tlsglue.ShedError
	if errors.As(ev.Err, &shed) {
		m.shed.WithLabelValues(string(shed.Reason)).Inc()
		if shed.Reason == tlsglue.ShedDeadline { // the others did not wait
			m.queueTime.Observe(ev.Queued.Seconds())
		}
		return
	}
	m.queueTime.Observe(ev.Queued.Seconds())
	if errors.Is(ev.Err, keyless.ErrOverloaded) {
		// Overload, not a signer failure: the signers are up and answered at once.
		m.shed.WithLabelValues(shedSignerOverloaded).Inc()
		m.signDuration.WithLabelValues("overloaded").Observe(ev.Duration.Seconds())
		return
	}
	outcome := "ok"
	if ev.Err != nil {
		outcome = "error"
		m.signerErrors.Inc()
	}
	m.signDuration.WithLabelValues(outcome).Observe(ev.Duration.Seconds())
}

// connState counts handshakes once a connection turns active (its handshake is done).
func (m *edgeMetrics) connState(c net.Conn, state http.ConnState) {
	if state != http.StateActive {
		return
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	st := tc.ConnectionState()
	kind := "full"
	if st.DidResume {
		kind = "resumed"
	}
	m.handshakes.WithLabelValues(kind, tls.VersionName(st.Version)).Inc()
}

func (m *edgeMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
