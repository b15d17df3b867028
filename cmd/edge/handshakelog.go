package main

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/rs/zerolog"
)

// handshakeLog turns net/http's error log into structured lines. net/http reports a failed TLS
// handshake as "http: TLS handshake error from ADDR: ERR" and knows nothing of the SNI, so the
// SNI of each ClientHello is kept by remote address from the ClientHello until the connection
// is active or closed, and added to the line.
//
// Install it as http.Server.ErrorLog (log.New(h, "", 0)), http.Server.ConnState and
// tlsglue.ServerOptions.OnClientHello, all three, or lines lose their sni.
type handshakeLog struct {
	log zerolog.Logger
	sni sync.Map // remote address → SNI
	// failed, if set, counts each failed handshake.
	failed func()
}

const handshakeErrorPrefix = "http: TLS handshake error from "

// Write receives one line from net/http's log.Logger.
func (h *handshakeLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	rest, ok := strings.CutPrefix(line, handshakeErrorPrefix)
	if !ok {
		h.log.Warn().Str("component", "http").Str("err", line).Msg("http server error")
		return len(p), nil
	}
	// The address has no ": " in it (IPv6 addresses are bracketed); the error comes after.
	remote, reason, _ := strings.Cut(rest, ": ")
	if h.failed != nil {
		h.failed()
	}
	ev := h.log.Warn()
	if clientWentAway(reason) {
		// TCP health checks and port scanners connect and close; that is not news.
		ev = h.log.Debug()
	}
	sni, _ := h.sni.Load(remote)
	name, _ := sni.(string)
	ev.Str("remote", remote).Str("sni", name).Str("err", reason).Msg("TLS handshake failed")
	return len(p), nil
}

func clientWentAway(reason string) bool {
	return reason == "EOF" || strings.HasSuffix(reason, "connection reset by peer") || strings.HasSuffix(reason, "broken pipe")
}

// clientHello records the SNI of a ClientHello; use it as tlsglue.ServerOptions.OnClientHello.
func (h *handshakeLog) clientHello(hello *tls.ClientHelloInfo) {
	if hello.ServerName != "" && hello.Conn != nil {
		h.sni.Store(hello.Conn.RemoteAddr().String(), hello.ServerName)
	}
}

// connState forgets a connection's SNI once its handshake is over; use it as
// http.Server.ConnState.
func (h *handshakeLog) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateActive, http.StateClosed, http.StateHijacked:
		h.sni.Delete(c.RemoteAddr().String())
	}
}
