package svidstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FederatedBundle is the trust bundle of another trust domain, which the
// local one federates with.
type FederatedBundle struct {
	// TrustDomain is the foreign trust domain.
	TrustDomain spiffeid.TrustDomain
	// X509 holds its X.509 authorities, or nil when it has none (a bundle
	// of JWT authorities only).
	X509 *Bundle
	// SPIFFE is the whole bundle, JWT authorities included.
	SPIFFE *spiffebundle.Bundle
}

// Federated is the set of federated bundles. It is immutable once built.
type Federated struct {
	// Bundles are sorted by trust domain name.
	Bundles []*FederatedBundle
	// Version identifies the content.
	Version string
}

// NewFederated builds the set of bundles. Two bundles of one trust domain
// are an error, and so is an X.509 authority that is not a CA.
func NewFederated(bundles []*spiffebundle.Bundle) (*Federated, error) {
	f := &Federated{}
	h := sha256.New()
	for _, b := range bundles {
		fb := &FederatedBundle{TrustDomain: b.TrustDomain(), SPIFFE: b}
		if certs := b.X509Authorities(); len(certs) > 0 {
			x, err := NewBundle(certs)
			if err != nil {
				return nil, fmt.Errorf("svidstore: federated trust domain %s: %w", b.TrustDomain().Name(), err)
			}
			fb.X509 = x
		}
		f.Bundles = append(f.Bundles, fb)
	}
	slices.SortFunc(f.Bundles, func(a, b *FederatedBundle) int {
		return strings.Compare(a.TrustDomain.Name(), b.TrustDomain.Name())
	})
	for i, b := range f.Bundles {
		if i > 0 && f.Bundles[i-1].TrustDomain == b.TrustDomain {
			return nil, fmt.Errorf("svidstore: two federated bundles for trust domain %s", b.TrustDomain.Name())
		}
		fmt.Fprintf(h, "%s;", b.TrustDomain.Name())
		if b.X509 != nil {
			h.Write([]byte(b.X509.Version))
		}
		kids := make([]string, 0, len(b.SPIFFE.JWTAuthorities()))
		for kid := range b.SPIFFE.JWTAuthorities() {
			kids = append(kids, kid)
		}
		slices.Sort(kids)
		fmt.Fprintf(h, ";%s\n", strings.Join(kids, ","))
	}
	sum := h.Sum(nil)
	f.Version = hex.EncodeToString(sum[:8])
	return f, nil
}

// Lookup returns the bundle of td, or nil.
func (f *Federated) Lookup(td spiffeid.TrustDomain) *FederatedBundle {
	if f == nil {
		return nil
	}
	for _, b := range f.Bundles {
		if b.TrustDomain == td {
			return b
		}
	}
	return nil
}
