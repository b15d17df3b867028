// Package keyless speaks the gokeyless (Keyless SSL) protocol for tkeyless:
// Client is the edge's side, a crypto.Signer whose private key lives on a
// signer cluster, and Server is the signer's side, which hands each
// authenticated ECDSA request to a Backend (the threshold coordinator).
//
// Both ends stay wire-compatible with stock gokeyless: a stock gokeyless
// client can sign through a Server, and a Client can use a stock gokeyless
// key server (the Keyless SSL baseline). tkeyless adds two optional items to
// requests, which stock servers ignore: the request authority (0xC0) and the
// time the client waits for the answer (0xC1), which bounds the signer's
// work. It adds three error codes, which stock clients read as "unknown
// error": ErrKeyDisabled (0x80), ErrNoQuorum (0x81) and ErrOverloaded
// (0x82). The framing lives in internal/keylesswire.
package keyless
