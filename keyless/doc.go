// Package keyless speaks the gokeyless (Keyless SSL) protocol for tkeyless:
// Client is the edge's side, a crypto.Signer whose private key lives on a
// signer cluster, and Server is the signer's side, which hands each
// authenticated ECDSA request to a Backend (the threshold coordinator).
//
// Both ends stay wire-compatible with stock gokeyless: a stock gokeyless
// client can sign through a Server, and a Client can use a stock gokeyless
// key server (the Keyless SSL baseline). tkeyless adds one optional item to
// requests, the request authority, which stock servers ignore. The framing
// lives in internal/keylesswire.
package keyless
