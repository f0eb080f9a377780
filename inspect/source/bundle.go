package source

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/inspect/pemder"
)

// Bundle loads trust anchors from ref: an http:// or https:// URL (such as
// the CA's /bundle endpoint), or a file path. The content is PEM or DER
// certificates, or a SPIFFE bundle (JWKS JSON), whose x509-svid authorities
// are used. client fetches URLs; nil means http.DefaultClient. It returns
// the certificates and a description of where they came from.
func Bundle(ctx context.Context, ref string, client *http.Client) ([]*x509.Certificate, string, error) {
	var (
		data []byte
		err  error
		name string
	)
	if strings.HasPrefix(ref, "http://") || strings.HasPrefix(ref, "https://") {
		name = ref
		data, err = fetch(ctx, ref, client)
	} else {
		name = "file:" + ref
		data, err = readFile(ref)
	}
	if err != nil {
		return nil, "", err
	}
	certs, err := parseBundle(data)
	if err != nil {
		return nil, "", fmt.Errorf("source: bundle %s: %w", name, err)
	}
	return certs, name, nil
}

func parseBundle(data []byte) ([]*x509.Certificate, error) {
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		// The trust domain only labels the parsed bundle.
		b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("bundle.invalid"), t)
		if err != nil {
			return nil, fmt.Errorf("not a SPIFFE bundle: %w", err)
		}
		certs := b.X509Authorities()
		if len(certs) == 0 {
			return nil, fmt.Errorf("the SPIFFE bundle holds no x509-svid authority")
		}
		return certs, nil
	}
	return pemder.ParseCertificates(data)
}

func fetch(ctx context.Context, url string, client *http.Client) ([]byte, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("source: bundle URL %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("source: fetching bundle: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // drained for reuse; the status is the error
		return nil, fmt.Errorf("source: fetching bundle %s: HTTP status %s", url, resp.Status)
	}
	return readAll(resp.Body, url)
}
