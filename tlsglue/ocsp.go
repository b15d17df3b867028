package tlsglue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.org/x/crypto/ocsp"
)

// ErrNoOCSP is returned by FetchOCSP for a certificate that names no OCSP responder (many CAs
// have stopped running them): there is nothing to staple.
var ErrNoOCSP = errors.New("certificate names no OCSP responder")

// FetchOCSP asks the OCSP responder the chain's leaf names for the leaf's status and returns the
// DER response to staple, with its parsed form. It refuses a response that does not verify
// against the leaf's issuer, is not current, or says anything but "good": stapling a revoked
// status would only make clients fail faster, and the operator must hear of it.
func FetchOCSP(ctx context.Context, c *Chain, client *http.Client) ([]byte, *ocsp.Response, error) {
	if len(c.Leaf.OCSPServer) == 0 {
		return nil, nil, ErrNoOCSP
	}
	if len(c.Intermediates) == 0 {
		return nil, nil, errors.New("ocsp: the chain has no issuer certificate to ask about the leaf with")
	}
	issuer := c.Intermediates[0]
	req, err := ocsp.CreateRequest(c.Leaf, issuer, &ocsp.RequestOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: %w", err)
	}
	url := c.Leaf.OCSPServer[0]
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: ask %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("ocsp: %s answered %s", url, resp.Status)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: read %s: %w", url, err)
	}
	parsed, err := ocsp.ParseResponseForCert(der, c.Leaf, issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: response from %s: %w", url, err)
	}
	now := time.Now()
	switch {
	case parsed.Status == ocsp.Revoked:
		return nil, parsed, fmt.Errorf("ocsp: %s says certificate %s was REVOKED at %s", url, c.Leaf.SerialNumber, parsed.RevokedAt.UTC().Format(time.RFC3339))
	case parsed.Status != ocsp.Good:
		return nil, parsed, fmt.Errorf("ocsp: %s does not know certificate %s", url, c.Leaf.SerialNumber)
	case now.Before(parsed.ThisUpdate.Add(-5 * time.Minute)), !parsed.NextUpdate.IsZero() && now.After(parsed.NextUpdate):
		return nil, parsed, fmt.Errorf("ocsp: response from %s is not current (valid %s to %s)", url, parsed.ThisUpdate, parsed.NextUpdate)
	}
	return der, parsed, nil
}

// StapleRefresh is when a staple fetched at thisUpdate..nextUpdate should be fetched again:
// half way, as browsers and servers commonly do, and within an hour if the responder gives no
// next update.
func StapleRefresh(r *ocsp.Response) time.Time {
	if r.NextUpdate.IsZero() {
		return time.Now().Add(time.Hour)
	}
	return r.ThisUpdate.Add(r.NextUpdate.Sub(r.ThisUpdate) / 2)
}
