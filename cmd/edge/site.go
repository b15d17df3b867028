package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// siteHandler is what the edge serves behind TLS: a static directory, a reverse proxy to an
// upstream, or, with neither, a one-line page (enough for load tests and a first run). Either way
// /healthz is the edge's own, status only (see signHealth.public).
func siteHandler(staticDir, upstream string, health *signHealth, log zerolog.Logger) (http.Handler, error) {
	var content http.Handler
	switch {
	case staticDir != "" && upstream != "":
		return nil, fmt.Errorf("--static %s and --upstream %s: give one of them", staticDir, upstream)
	case staticDir != "":
		fi, err := os.Stat(staticDir)
		if err != nil {
			return nil, fmt.Errorf("--static: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--static %s: not a directory", staticDir)
		}
		content = http.FileServer(http.Dir(staticDir))
	case upstream != "":
		target, err := url.Parse(upstream)
		if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
			return nil, fmt.Errorf("--upstream %q: want an http:// or https:// URL with a host", upstream)
		}
		content = reverseProxy(target, log)
	default:
		content = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "tkeyless edge\n")
		})
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", health.public())
	mux.Handle("/", content)
	return mux, nil
}

// reverseProxy forwards to target with X-Forwarded-For, -Host and -Proto set from this
// connection. Forwarded headers a client sent are dropped, not extended: the edge is the first
// hop anyone should trust.
func reverseProxy(target *url.URL, log zerolog.Logger) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Warn().Str("upstream", target.Redacted()).Str("path", r.URL.Path).Err(err).Msg("upstream request failed")
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

// failuresBeforeUnhealthy is how many signatures in a row must fail before /healthz says 503.
// One failure is a slow handshake; several in a row mean this edge cannot reach its signers.
const failuresBeforeUnhealthy = 5

// overloadedFor is how long after its last shed handshake the edge reports "overloaded".
const overloadedFor = 10 * time.Second

// overloaded reports whether a handshake's signature failed for overload rather than for want
// of a working signer: the edge shed it itself, or the signers refused it at once as
// overloaded (keyless.ErrOverloaded, from any signer tried: one that answers is alive, and
// the client fails over to the others while the deadline allows).
func overloaded(err error) bool {
	return errors.Is(err, tlsglue.ErrShed) || errors.Is(err, keyless.ErrOverloaded)
}

// signHealth follows handshake signatures: /healthz answers 503 "cannot sign" once the last
// failuresBeforeUnhealthy signatures all failed; 200 "overloaded" when it shed a handshake in
// the last overloadedFor (a flood: healthy, and a load balancer that ejected every flooded edge
// would finish the attacker's work); and 200 "ok" otherwise (also before any handshake: an idle
// edge is not a broken one). A shed handshake is not a failed signature, and neither is one
// the signers refused as overloaded: both say "overloaded". It has two views:
// public, on the HTTPS port, says only that; detail, on the private --metrics-listen, adds the
// failures and the last error, which names signer addresses and the key.
type signHealth struct {
	log      zerolog.Logger
	mu       sync.Mutex
	failures int   // consecutive failed signatures
	lastErr  error // the latest failure
	lastShed time.Time
	shedErr  error // the latest shed, for the detail
	now      func() time.Time
}

// record is the tlsglue.ServerOptions.OnSign hook.
func (h *signHealth) record(ev tlsglue.SignEvent) {
	h.log.Debug().Str("key", ev.Key).Str("sni", ev.ServerName).Str("remote", ev.Remote).
		Int64("dur_ms", ev.Duration.Milliseconds()).AnErr("err", ev.Err).Msg("handshake signature")
	h.mu.Lock()
	defer h.mu.Unlock()
	if overloaded(ev.Err) {
		if h.lastShed.IsZero() || h.clock().Sub(h.lastShed) >= overloadedFor {
			h.log.Warn().Err(ev.Err).Msg("overloaded: shedding full handshakes, or the signers refuse them as overloaded")
		}
		h.lastShed, h.shedErr = h.clock(), ev.Err
		return
	}
	if ev.Err == nil {
		if h.failures >= failuresBeforeUnhealthy {
			h.log.Info().Str("key", ev.Key).Msg("signatures succeed again; healthy")
		}
		h.failures, h.lastErr = 0, nil
		return
	}
	h.failures++
	h.lastErr = ev.Err
	if h.failures == failuresBeforeUnhealthy {
		h.log.Error().Str("key", ev.Key).Err(ev.Err).Int("failures", h.failures).Msg("signatures keep failing; unhealthy")
	}
}

func (h *signHealth) clock() time.Time {
	if h.now != nil {
		return h.now()
	}
	return time.Now()
}

// public is /healthz for anyone who can reach the site: status only, "ok" or "overloaded"
// (200) or "cannot sign" (503). A load balancer needs no more, and the reason would tell the
// internet where the signers are and which key they hold.
func (h *signHealth) public() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		failures, _, shedErr := h.state()
		noStore(w)
		switch {
		case failures >= failuresBeforeUnhealthy:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "cannot sign")
		case shedErr != nil:
			io.WriteString(w, "overloaded")
		default:
			io.WriteString(w, "ok")
		}
	})
}

// detail is /healthz on the metrics listener, for the operator: the same status codes, and the
// reason.
func (h *signHealth) detail() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		failures, lastErr, shedErr := h.state()
		noStore(w)
		switch {
		case failures >= failuresBeforeUnhealthy:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "unhealthy: the last %d handshake signatures failed: %v\n", failures, lastErr)
		case shedErr != nil:
			fmt.Fprintf(w, "overloaded (healthy): full handshakes shed or refused by overloaded signers in the last %v, the latest: %v (see tkeyless_edge_handshakes_shed_total)\n", overloadedFor, shedErr)
		case failures > 0:
			fmt.Fprintf(w, "ok; the last %d handshake signatures failed (unhealthy at %d): %v\n", failures, failuresBeforeUnhealthy, lastErr)
		default:
			io.WriteString(w, "ok")
		}
	})
}

// state is the consecutive failures, the last failure, and the latest shed if the edge is
// overloaded now.
func (h *signHealth) state() (failures int, lastErr, shedErr error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.lastShed.IsZero() && h.clock().Sub(h.lastShed) < overloadedFor {
		shedErr = h.shedErr
	}
	return h.failures, h.lastErr, shedErr
}

func noStore(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
}
