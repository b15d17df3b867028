package node

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tkeyless/tkeyless/internal/peerwire"
)

// Status is this node's view of itself, its keys and its peers: what
// `signer status` shows and /status serves.
func (n *Node) Status() *peerwire.StatusResponse {
	st := &peerwire.StatusResponse{Node: n.cfg.Name, Sessions: n.sessions.count(), Queue: n.admission.inProgress(), Peers: n.peerStatuses()}
	for _, id := range n.Keys() {
		s, _ := n.share(id)
		reach := 1 // this node
		for _, p := range s.Parties {
			if p != n.cfg.Name && n.reachable(p) && !n.convicted(p) {
				reach++
			}
		}
		disabled := n.keyDisabled(id)
		aborts, suspended := n.budget.state(id.String())
		ks := peerwire.KeyStatus{Key: id.String(), Threshold: s.Threshold, Parties: s.Parties,
			Disabled: disabled, Available: !disabled && suspended == "" && reach >= s.Quorum(),
			StateVersion: n.keyState.get(id.String()).Version, Aborts: aborts, Budget: n.budget.limit, Suspended: suspended}
		ks.Presignatures, ks.PresignTarget = n.pool.depth(id), n.cfg.Presign.Depth
		if p, ok := n.pending.get(id); ok {
			ks.ResharePending = p.Session.String()
		}
		st.Keys = append(st.Keys, ks)
	}
	slices.SortFunc(st.Keys, func(a, b peerwire.KeyStatus) int { return strings.Compare(a.Key, b.Key) })
	return st
}

// Healthy reports whether the node can sign with at least one of its keys
// (or holds none yet), for load balancers.
func (n *Node) Healthy() bool {
	st := n.Status()
	if len(st.Keys) == 0 {
		return true
	}
	for _, k := range st.Keys {
		if k.Available {
			return true
		}
	}
	return false
}

// HTTPHandler serves /healthz, /metrics and /status.
func (n *Node) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !n.Healthy() {
			http.Error(w, "no key can reach a quorum", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(n.Status())
	})
	return mux
}

func (s *peerService) Status(ctx context.Context, _ *peerwire.StatusRequest) (*peerwire.StatusResponse, error) {
	return s.n.Status(), nil
}
