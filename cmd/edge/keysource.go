package main

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// defaultKeylessPort is the gokeyless port, used for an endpoint given without one.
const defaultKeylessPort = "2407"

// keyRef is a parsed --signer key reference.
//
//	keyless://host:port,host:port[/?ski=HEX]   signers speaking the gokeyless protocol
//	file:///path/key.pem                       a key held in memory (load-test baseline)
type keyRef struct {
	scheme    string   // "keyless" or "file"
	endpoints []string // keyless: host:port of each signer
	ski       string   // keyless: the key the certificate must be for, hex; optional
	path      string   // file: the PEM private key
}

const keyRefForms = "want keyless://host:port[,host:port…][?ski=HEX] or file:///path/key.pem"

func parseKeyRef(s string) (keyRef, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if strings.HasPrefix(s, "file:") { // file:relative/key.pem
			return keyRef{scheme: "file", path: strings.TrimPrefix(s, "file:")}, nil
		}
		return keyRef{}, fmt.Errorf("--signer %q: %s", s, keyRefForms)
	}
	switch scheme {
	case "file":
		u, err := url.Parse(s)
		if err != nil {
			return keyRef{}, fmt.Errorf("--signer %q: %w", s, err)
		}
		path := u.Path
		if u.Host != "" && u.Host != "localhost" { // file://relative/key.pem
			path = u.Host + u.Path
		}
		if path == "" {
			return keyRef{}, fmt.Errorf("--signer %q: no key file path; %s", s, keyRefForms)
		}
		return keyRef{scheme: "file", path: path}, nil
	case "keyless":
		hosts, query, _ := strings.Cut(rest, "?")
		hosts = strings.TrimSuffix(hosts, "/")
		ref := keyRef{scheme: "keyless"}
		if query != "" {
			q, err := url.ParseQuery(query)
			if err != nil {
				return keyRef{}, fmt.Errorf("--signer %q: query: %w", s, err)
			}
			for k := range q {
				if k != "ski" {
					return keyRef{}, fmt.Errorf("--signer %q: unknown parameter %q (only ski is known)", s, k)
				}
			}
			ref.ski = q.Get("ski")
		}
		for h := range strings.SplitSeq(hosts, ",") {
			h = strings.TrimSpace(h)
			if h == "" {
				continue
			}
			if _, _, err := net.SplitHostPort(h); err != nil {
				// No port (or a bare IPv6 address): the gokeyless default.
				h = net.JoinHostPort(strings.Trim(h, "[]"), defaultKeylessPort)
			}
			if host, port, err := net.SplitHostPort(h); err != nil || host == "" || port == "" {
				return keyRef{}, fmt.Errorf("--signer %q: endpoint %q is not host:port", s, h)
			}
			ref.endpoints = append(ref.endpoints, h)
		}
		if len(ref.endpoints) == 0 {
			return keyRef{}, fmt.Errorf("--signer %q: no signer endpoints; %s", s, keyRefForms)
		}
		return ref, nil
	default:
		return keyRef{}, fmt.Errorf("--signer %q: unknown scheme %q; %s", s, scheme, keyRefForms)
	}
}

func (r keyRef) String() string {
	if r.scheme == "file" {
		return "file://" + r.path
	}
	return "keyless://" + strings.Join(r.endpoints, ",")
}

// keylessTLS is how the edge reaches keyless signers: its client identity and the CA that
// certifies the signers.
type keylessTLS struct {
	cert, key, ca string
	serverName    string
}

// config builds the client TLS configuration for the signers: mutual TLS with the edge's
// identity, signers verified against --keyless-ca (or the system roots without it).
func (kt keylessTLS) config() (*tls.Config, error) {
	if kt.cert == "" || kt.key == "" {
		return nil, errors.New("a keyless:// signer needs the edge's identity: --keyless-cert and --keyless-key")
	}
	id, err := tls.LoadX509KeyPair(kt.cert, kt.key)
	if err != nil {
		return nil, fmt.Errorf("--keyless-cert %s, --keyless-key %s: %w", kt.cert, kt.key, err)
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{id},
		ServerName:   kt.serverName,
	}
	if kt.ca != "" {
		pem, err := os.ReadFile(kt.ca)
		if err != nil {
			return nil, fmt.Errorf("--keyless-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--keyless-ca %s: no PEM certificate in it", kt.ca)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// loadPrivateKey reads a PEM private key (PKCS#8, SEC 1 EC or PKCS#1 RSA). Errors never quote
// the file's contents.
func loadPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--signer file: %w", err)
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("--signer file %s: no PEM private key in it", path)
		}
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue // e.g. EC PARAMETERS before the key
		}
		if err != nil {
			return nil, fmt.Errorf("--signer file %s: parse %s: %w", path, block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("--signer file %s: a %T cannot sign", path, key)
		}
		return signer, nil
	}
}
