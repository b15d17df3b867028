// Package tss is tkeyless's threshold-ECDSA engine: GG18 distributed key
// generation and resharing on P-256 with tss-lib, and GG18 signing in
// tkeyless's own rounds (engine.go, wire-compatible with tss-lib's), over a
// transport the caller provides.
//
// The engine never holds more than one party's share. A Session runs one
// party of one ceremony (keygen or signing); the caller delivers the messages
// other members send it and carries the messages it produces through an
// Outbox. Who may send what is decided outside: the engine trusts that the
// sender name given to Deliver was authenticated by the transport.
package tss

import (
	"crypto/elliptic"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
	ipfslog "github.com/ipfs/go-log"
)

// CurveName is the name P-256 is registered under in tss-lib's curve registry.
const CurveName tsslib.CurveName = "P-256"

// curve is the only curve tkeyless signs with: what TLS clients accept for
// ECDSA certificates everywhere.
var curve = elliptic.P256()

func init() {
	// tss.SameCurve returns false for curves missing from tss-lib's
	// registry, which fails P-256 signing in round 3 ("failed to calculate
	// Alice_end"); register it before any party exists.
	tsslib.RegisterCurve(CurveName, curve)
	// tss-lib logs every round at info through go-log; our own logs say
	// what matters, with session and peer fields.
	_ = ipfslog.SetLogLevel("tss-lib", "error")
}
