package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one node's Prometheus series, in a registry of its own so
// that several nodes can live in one process (tests, embedding).
type metrics struct {
	reg          *prometheus.Registry
	signRequests *prometheus.CounterVec
	signDuration *prometheus.HistogramVec
	aborts       *prometheus.CounterVec
	culprits     *prometheus.CounterVec
	refused      *prometheus.CounterVec
	queueDepth   prometheus.Gauge
	sessions     prometheus.GaugeFunc
	peerUp       *prometheus.GaugeVec
	presign      *prometheus.CounterVec
	presignDepth *prometheus.GaugeVec
	signPath     *prometheus.HistogramVec
	convictions  *prometheus.CounterVec
	convicted    *prometheus.GaugeVec
	unattributed *prometheus.CounterVec
	faults       *prometheus.CounterVec
	suspended    *prometheus.GaugeVec
	queueLength  prometheus.Gauge
	queueWait    prometheus.Histogram
	computing    prometheus.Gauge
	overloaded   *prometheus.CounterVec
	cancelled    *prometheus.CounterVec
	reloads      *prometheus.CounterVec
	lastReload   prometheus.Gauge
	echoes       *prometheus.CounterVec
	messages     *prometheus.CounterVec
}

func newMetrics(sessions func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		signRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_signer_sign_requests_total",
			Help: "Signing requests this node coordinated, by outcome (signed, failed, refused, overloaded).",
		}, []string{"outcome"}),
		signDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tkeyless_signer_sign_duration_seconds",
			Help:    "Time to coordinate one signature, by outcome.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10},
		}, []string{"outcome"}),
		aborts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_signer_session_aborts_total",
			Help: "Signing sessions that failed, by kind of failure (member, deadline, protocol).",
		}, []string{"reason"}),
		culprits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_signer_culprits_total",
			Help: "Failed sessions blamed on a peer.",
		}, []string{"peer"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tkeyless_signer_refused_total",
			Help: "Peer messages and session requests this node refused, by what was refused.",
		}, []string{"what"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tkeyless_signer_queue_depth",
			Help: "Signing requests this node is coordinating now, waiting for a session slot or running (bounded by max_queue).",
		}),
		peerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tkeyless_signer_peer_up",
			Help: "Whether the last ping to a peer succeeded.",
		}, []string{"peer"}),
	}
	m.presign = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_presign_total",
		Help: "Presignature events: made, failed (to make), hit (a request used one), miss (pool empty), fallback (a member had lost its half; signed the full way), spent (a finish failed after its members used their halves; the edge retries with a fresh request), preempted (a refill gave its slot to a live request).",
	}, []string{"event"})
	m.presignDepth = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tkeyless_signer_presign_pool_depth",
		Help: "Ready presignatures this node holds for the requests it coordinates, by key.",
	}, []string{"key"})
	m.faults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_arithmetic_faults_total",
		Help: "Sessions this node ended because its own CRT arithmetic failed its consistency check: a fault of this machine (memory, CPU), named on no peer. Anything above zero needs looking at.",
	}, []string{"key"})
	m.signPath = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tkeyless_signer_sign_path_duration_seconds",
		Help:    "Time to make one signature that succeeded, by path: presign (online rounds only) or full.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5},
	}, []string{"path"})
	m.convictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_convictions_total",
		Help: "Peers this node convicted of misbehaviour (a message no honest member sends): alert on any increase.",
	}, []string{"peer"})
	m.convicted = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tkeyless_signer_peer_convicted",
		Help: "1 while a peer is convicted here and excluded from every session, until an admin readmits it.",
	}, []string{"peer"})
	m.unattributed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_unattributed_aborts_total",
		Help: "Signing sessions with a key that failed without naming a culprit (charged to the key's abort budget).",
	}, []string{"key"})
	m.suspended = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tkeyless_signer_key_suspended",
		Help: "1 while a key's abort budget is spent on this node and it does not sign here until an admin resumes it.",
	}, []string{"key"})
	m.queueLength = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tkeyless_signer_admission_queue_length",
		Help: "Sessions waiting for a slot here (live requests and presignature refills).",
	})
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tkeyless_signer_admission_queue_wait_seconds",
		Help:    "Time a session waited for its slot here.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10},
	})
	m.computing = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tkeyless_signer_admission_computing",
		Help: "Sessions computing here now, coordinated or joined (bounded by max_concurrent_sessions, plus joined ones).",
	})
	m.overloaded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_overloaded_total",
		Help: "Signing requests refused at once as overloaded, by reason: queue_full (max_queue), identity (max_queue_per_identity), deadline (it could not finish in time).",
	}, []string{"reason"})
	m.cancelled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_sessions_cancelled_total",
		Help: "Signing sessions that stopped because their requester gave up or their deadline passed, by this node's role (coordinator, member).",
	}, []string{"role"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_reloads_total",
		Help: "Configuration reloads (SIGHUP), by result: ok, or failed (the previous configuration stayed in force; the log says why).",
	}, []string{"result"})
	m.lastReload = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tkeyless_signer_config_last_reload_success_timestamp_seconds",
		Help: "Unix time the certificate, CA, access list and revocations in force were loaded (at start, or by the last successful reload).",
	})
	m.sessions = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tkeyless_signer_sessions",
		Help: "Sessions (coordinated or joined) live on this node.",
	}, sessions)
	m.echoes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_echoes_total",
		Help: "Echoes of other members' broadcasts this node accepted, by how they came: call (an Echo call of its own) or envelope (carried on the echoer's next message, protocol version 4).",
	}, []string{"via"})
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tkeyless_signer_peer_messages_total",
		Help: "Session messages other members delivered here, by how they came: stream (a link's Deliveries stream, protocol version 4) or call (a Deliver call each).",
	}, []string{"via"})
	m.reg.MustRegister(m.messages, m.echoes, m.signRequests, m.signDuration, m.aborts, m.culprits, m.refused, m.queueDepth, m.sessions, m.peerUp, m.presign, m.presignDepth, m.signPath,
		m.convictions, m.convicted, m.unattributed, m.faults, m.suspended, m.queueLength, m.queueWait, m.computing, m.overloaded, m.cancelled, m.reloads, m.lastReload,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
