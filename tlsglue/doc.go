// Package tlsglue wires the edge's TLS termination to a key it does not hold.
//
// An edge serves a certificate chain loaded from files (LoadChain) whose private key lives as
// threshold shares on the signer cluster. ServerConfig builds the crypto/tls configuration: on
// each full handshake it asks a KeySource for a crypto.Signer bound to that handshake's deadline,
// and crypto/tls sends the one digest the handshake needs to it. Resumed handshakes (session
// tickets, with keys from TicketKeys when a fleet shares a secret) need no signature at all.
// CreateCSR turns the cluster's key into a certificate request for a CA.
//
// Files by concern: chain.go (certificates and key identity), config.go (the tls.Config and the
// per-handshake signer), tickets.go (session ticket keys), csr.go (certificate requests).
package tlsglue
