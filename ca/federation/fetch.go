package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// MaxBundleResponse is the largest bundle endpoint response read, in
// bytes; a longer one is refused as too large.
const MaxBundleResponse = 1 << 20

// Reasons a fetch is refused, the values of the reason label of
// castellan_federation_refresh_failures_total.
const (
	ReasonUnreachable      = "unreachable"        // connection, TLS or HTTP transport error
	ReasonHTTPStatus       = "http_status"        // an answer other than 200
	ReasonTooLarge         = "too_large"          // over MaxBundleResponse
	ReasonMalformed        = "malformed"          // not a SPIFFE bundle
	ReasonEmpty            = "empty"              // a bundle with no authority
	ReasonWrongTrustDomain = "wrong_trust_domain" // an authority names another trust domain
	ReasonSequenceBackward = "sequence_backwards" // spiffe_sequence lower than the last good one's
)

// FetchError is a refused fetch: Reason is one of the Reason constants.
type FetchError struct {
	Reason string
	Err    error
}

func (e *FetchError) Error() string { return e.Err.Error() }
func (e *FetchError) Unwrap() error { return e.Err }

func refuse(reason, format string, args ...any) error {
	return &FetchError{Reason: reason, Err: fmt.Errorf("federation: "+format, args...)}
}

// fetcher fetches one relationship's bundle.
type fetcher struct {
	rel   Relationship
	roots *x509.CertPool // ProfileWeb: nil for the system roots
}

// tlsConfig authenticates the endpoint. For ProfileSPIFFE it checks the
// endpoint's X509-SVID against current, the foreign trust domain's last
// good bundle, and requires the configured SPIFFE ID (go-spiffe's
// tlsconfig, as federation.FetchBundle does).
func (f *fetcher) tlsConfig(current *spiffebundle.Bundle) *tls.Config {
	if f.rel.Profile == ProfileSPIFFE {
		src := x509bundle.NewSet(current.X509Bundle())
		return tlsconfig.TLSClientConfig(src, tlsconfig.AuthorizeID(f.rel.EndpointID))
	}
	return &tls.Config{RootCAs: f.roots, MinVersion: tls.VersionTLS12}
}

// fetch GETs the bundle and checks it against current, the last good one.
// Every refusal is a *FetchError. go-spiffe's federation.FetchBundle is
// not used because it reads the body without a size limit and ignores the
// HTTP status; this is the same request, over go-spiffe's TLS
// configuration and bundle parser.
func (f *fetcher) fetch(ctx context.Context, current *spiffebundle.Bundle, timeout time.Duration) (*spiffebundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{
		TLSClientConfig:        f.tlsConfig(current),
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		DisableKeepAlives:      true,
		Proxy:                  http.ProxyFromEnvironment,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("redirects are not followed")
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.rel.URL, http.NoBody)
	if err != nil {
		return nil, refuse(ReasonUnreachable, "%s: request: %w", f.rel.URL, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, refuse(ReasonUnreachable, "GET %s: %w", f.rel.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, refuse(ReasonHTTPStatus, "GET %s: status %s: %q", f.rel.URL, resp.Status, bytes.TrimSpace(msg))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleResponse+1))
	if err != nil {
		return nil, refuse(ReasonUnreachable, "GET %s: reading the body: %w", f.rel.URL, err)
	}
	if len(body) > MaxBundleResponse {
		return nil, refuse(ReasonTooLarge, "GET %s: the bundle is over %d bytes", f.rel.URL, MaxBundleResponse)
	}
	return checkBundle(f.rel.TrustDomain, body, current)
}

// checkBundle parses a fetched bundle of td and checks it against current
// (nil when there is none).
func checkBundle(td spiffeid.TrustDomain, body []byte, current *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
	b, err := spiffebundle.Parse(td, body)
	if err != nil {
		return nil, refuse(ReasonMalformed, "the bundle of %s does not parse: %w", td.Name(), err)
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return nil, refuse(ReasonEmpty, "the bundle of %s holds no authority", td.Name())
	}
	// A SPIFFE bundle does not name its trust domain, but CA certificates
	// may carry the trust domain's SPIFFE ID (Castellan's and SPIRE's
	// do): one that names another trust domain is another domain's bundle.
	for _, c := range b.X509Authorities() {
		if !c.IsCA {
			return nil, refuse(ReasonMalformed, "the bundle of %s holds a certificate that is not a CA (subject %q)", td.Name(), c.Subject.String())
		}
		if id, err := x509svid.IDFromCert(c); err == nil && id.TrustDomain() != td {
			return nil, refuse(ReasonWrongTrustDomain, "the bundle fetched for %s holds an authority of trust domain %s (subject %q)", td.Name(), id.TrustDomain().Name(), c.Subject.String())
		}
	}
	if current != nil {
		last, lok := current.SequenceNumber()
		next, nok := b.SequenceNumber()
		if lok && nok && next < last {
			if sameAuthorities(b, current) {
				return current, nil // an older copy of the same content
			}
			return nil, refuse(ReasonSequenceBackward, "the bundle of %s has spiffe_sequence %d, lower than the last good one's %d, with other authorities", td.Name(), next, last)
		}
	}
	return b, nil
}

// sameAuthorities reports whether a and b hold the same keys, whatever
// their sequence numbers and refresh hints.
func sameAuthorities(a, b *spiffebundle.Bundle) bool {
	a, b = a.Clone(), b.Clone()
	for _, x := range []*spiffebundle.Bundle{a, b} {
		x.ClearSequenceNumber()
		x.ClearRefreshHint()
	}
	return a.Equal(b)
}
