// Package federated is the document in which the CA hands the trust
// bundles of federated trust domains to its agents: federated-bundles.json,
// a JSON object whose keys are trust domain names and whose values are
// SPIFFE bundles, each in the format of the SPIFFE bundle endpoint (a JWK
// set with spiffe_sequence and spiffe_refresh_hint).
//
// The CA writes it into its data directory and, in Kubernetes, into the
// trust ConfigMap beside root-cert.pem; agents read it from the file.
// Parse is strict: a document over its limits, or with one entry that does
// not parse, is refused as a whole, so that a reader keeps its last good
// set rather than a partial one.
package federated

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FileName is the name of the document, in the CA's data directory and as
// the key of the trust ConfigMap.
const FileName = "federated-bundles.json"

// Limits of a document.
const (
	// MaxDocumentSize is the largest document Parse accepts, in bytes.
	MaxDocumentSize = 4 << 20
	// MaxTrustDomains is the most trust domains a document may hold.
	MaxTrustDomains = 64
	// MaxBundleSize is the largest single bundle in a document, in bytes.
	MaxBundleSize = 1 << 20
)

// Marshal encodes bundles as a document, keyed by trust domain name. Two
// bundles of one trust domain are an error.
func Marshal(bundles []*spiffebundle.Bundle) ([]byte, error) {
	if len(bundles) > MaxTrustDomains {
		return nil, fmt.Errorf("federated: %d trust domains, over the limit of %d", len(bundles), MaxTrustDomains)
	}
	doc := make(map[string]json.RawMessage, len(bundles))
	for _, b := range bundles {
		td := b.TrustDomain().Name()
		if _, dup := doc[td]; dup {
			return nil, fmt.Errorf("federated: two bundles for trust domain %q", td)
		}
		raw, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("federated: could not encode the bundle of %q: %w", td, err)
		}
		doc[td] = raw
	}
	out, err := json.MarshalIndent(doc, "", "  ") // keys sorted: stable bytes
	if err != nil {
		return nil, fmt.Errorf("federated: %w", err)
	}
	if len(out) > MaxDocumentSize {
		return nil, fmt.Errorf("federated: document is %d bytes, over the %d-byte limit", len(out), MaxDocumentSize)
	}
	return append(out, '\n'), nil
}

// Parse decodes a document. It returns the bundles sorted by trust domain
// name. It refuses a document over MaxDocumentSize or MaxTrustDomains, a
// key that is not a trust domain name, a bundle that does not parse or is
// larger than MaxBundleSize, and a bundle with no authority.
func Parse(doc []byte) ([]*spiffebundle.Bundle, error) {
	if len(doc) > MaxDocumentSize {
		return nil, fmt.Errorf("federated: document is %d bytes, over the %d-byte limit", len(doc), MaxDocumentSize)
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, errors.New("federated: empty document (an empty set is {})")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("federated: document is not a JSON object of bundles: %w", err)
	}
	if len(raw) > MaxTrustDomains {
		return nil, fmt.Errorf("federated: %d trust domains, over the limit of %d", len(raw), MaxTrustDomains)
	}
	out := make([]*spiffebundle.Bundle, 0, len(raw))
	for name, b := range raw {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("federated: key %q is not a trust domain name: %w", truncate(name), err)
		}
		if td.Name() != name {
			return nil, fmt.Errorf("federated: key %q must be a bare trust domain name (%q)", truncate(name), td.Name())
		}
		if len(b) > MaxBundleSize {
			return nil, fmt.Errorf("federated: the bundle of %q is %d bytes, over the %d-byte limit", name, len(b), MaxBundleSize)
		}
		bundle, err := spiffebundle.Parse(td, b)
		if err != nil {
			return nil, fmt.Errorf("federated: the bundle of %q: %w", name, err)
		}
		if bundle.Empty() {
			return nil, fmt.Errorf("federated: the bundle of %q holds no authority", name)
		}
		out = append(out, bundle)
	}
	slices.SortFunc(out, func(a, b *spiffebundle.Bundle) int {
		return strings.Compare(a.TrustDomain().Name(), b.TrustDomain().Name())
	})
	return out, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
