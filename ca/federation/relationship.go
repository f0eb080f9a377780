package federation

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Profile is how a bundle endpoint authenticates itself, as the SPIFFE
// Trust Domain and Bundle specification names them.
type Profile string

// The two profiles of the specification.
const (
	// ProfileSPIFFE: the endpoint presents an X509-SVID with a known
	// SPIFFE ID, checked against the foreign trust domain's own bundle
	// (the last good one; the first one is given by the operator).
	ProfileSPIFFE Profile = "https_spiffe"
	// ProfileWeb: the endpoint presents a Web PKI certificate for the
	// URL's host, checked against the system roots or given roots.
	ProfileWeb Profile = "https_web"
)

// Limits of a relationship specification.
const (
	// MaxSpecLen is the longest --federate-with value accepted.
	MaxSpecLen = 4096
	// MaxURLLen is the longest bundle endpoint URL accepted.
	MaxURLLen = 2048
)

// Relationship is one foreign trust domain the CA federates with: where
// its bundle endpoint is and how that endpoint is authenticated.
type Relationship struct {
	// TrustDomain is the foreign trust domain.
	TrustDomain spiffeid.TrustDomain
	// URL is its bundle endpoint, an https URL.
	URL string
	// Profile says how the endpoint is authenticated.
	Profile Profile
	// EndpointID is the SPIFFE ID the endpoint presents (ProfileSPIFFE
	// only).
	EndpointID spiffeid.ID
	// BundleFile holds the foreign trust domain's first bundle, in the
	// SPIFFE bundle format (ProfileSPIFFE only, required): the endpoint
	// is authenticated with it until a newer bundle is fetched. There is
	// no trust on first use.
	BundleFile string
	// WebRootsFile, if set, holds the PEM roots that authenticate an
	// https_web endpoint instead of the system roots (ProfileWeb only).
	WebRootsFile string
}

// String returns the relationship in the syntax ParseRelationship reads.
func (r Relationship) String() string {
	s := r.TrustDomain.Name() + "=" + r.URL + "," + string(r.Profile)
	if !r.EndpointID.IsZero() {
		s += "," + r.EndpointID.String()
	}
	if r.BundleFile != "" {
		s += ",bundle=" + r.BundleFile
	}
	if r.WebRootsFile != "" {
		s += ",roots=" + r.WebRootsFile
	}
	return s
}

// ParseRelationship reads one --federate-with value:
//
//	TRUST_DOMAIN=URL,https_spiffe,ENDPOINT_SPIFFE_ID,bundle=FILE
//	TRUST_DOMAIN=URL,https_web[,roots=FILE]
//
// TRUST_DOMAIN is a bare trust domain name, URL an https URL without user
// information or fragment. https_spiffe needs the SPIFFE ID the endpoint
// presents, which must belong to TRUST_DOMAIN, and the file of the trust
// domain's first bundle (SPIFFE bundle JSON), which authenticates the
// endpoint until the first fetch. https_web takes an optional PEM file of
// roots in place of the system roots. Any other field, a repeated field or
// an option of the other profile is an error.
func ParseRelationship(spec string) (Relationship, error) {
	var r Relationship
	if len(spec) > MaxSpecLen {
		return r, fmt.Errorf("federation: specification is %d bytes, over the limit of %d", len(spec), MaxSpecLen)
	}
	name, rest, ok := strings.Cut(spec, "=")
	if !ok || name == "" {
		return r, errors.New("federation: want TRUST_DOMAIN=URL,PROFILE[,...], got no trust domain")
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || td.Name() != name {
		return r, fmt.Errorf("federation: %q is not a bare trust domain name (lower case letters, digits, '.', '-', '_')", name)
	}
	r.TrustDomain = td
	fields := strings.Split(rest, ",")
	if len(fields) < 2 {
		return r, fmt.Errorf("federation: %s: want URL,PROFILE after the trust domain", name)
	}
	if r.URL, err = parseURL(fields[0]); err != nil {
		return r, fmt.Errorf("federation: %s: %w", name, err)
	}
	switch p := Profile(fields[1]); p {
	case ProfileSPIFFE, ProfileWeb:
		r.Profile = p
	default:
		return r, fmt.Errorf("federation: %s: profile %q is neither %s nor %s", name, fields[1], ProfileSPIFFE, ProfileWeb)
	}
	for _, f := range fields[2:] {
		key, val, isOpt := strings.Cut(f, "=")
		switch {
		case strings.HasPrefix(f, "spiffe://"):
			if r.Profile != ProfileSPIFFE {
				return r, fmt.Errorf("federation: %s: an endpoint SPIFFE ID is for %s only", name, ProfileSPIFFE)
			}
			if !r.EndpointID.IsZero() {
				return r, fmt.Errorf("federation: %s: two endpoint SPIFFE IDs", name)
			}
			id, err := spiffeid.FromString(f)
			if err != nil {
				return r, fmt.Errorf("federation: %s: endpoint SPIFFE ID %q: %w", name, f, err)
			}
			if id.TrustDomain() != td {
				return r, fmt.Errorf("federation: %s: endpoint SPIFFE ID %q is not in trust domain %s", name, f, td.Name())
			}
			r.EndpointID = id
		case isOpt && (key == "bundle" || key == "roots"):
			file, profile := &r.BundleFile, ProfileSPIFFE
			if key == "roots" {
				file, profile = &r.WebRootsFile, ProfileWeb
			}
			switch {
			case r.Profile != profile:
				return r, fmt.Errorf("federation: %s: %s= is for %s only", name, key, profile)
			case *file != "" || val == "":
				return r, fmt.Errorf("federation: %s: %s= needs one file name", name, key)
			}
			*file = val
		default:
			return r, fmt.Errorf("federation: %s: unknown field %q (want a spiffe:// endpoint ID, bundle=FILE or roots=FILE)", name, truncate(f))
		}
	}
	if r.Profile == ProfileSPIFFE {
		switch {
		case r.EndpointID.IsZero():
			return r, fmt.Errorf("federation: %s: %s needs the endpoint's SPIFFE ID", name, ProfileSPIFFE)
		case r.BundleFile == "":
			return r, fmt.Errorf("federation: %s: %s needs bundle=FILE, the trust domain's first bundle (there is no trust on first use)", name, ProfileSPIFFE)
		}
	}
	return r, nil
}

func parseURL(s string) (string, error) {
	if len(s) > MaxURLLen {
		return "", fmt.Errorf("URL is %d bytes, over the limit of %d", len(s), MaxURLLen)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("URL %q: %w", truncate(s), err)
	case u.Scheme != "https":
		return "", fmt.Errorf("URL %q: a bundle endpoint is https", truncate(s))
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("URL %q has no host", truncate(s))
	case u.User != nil:
		return "", fmt.Errorf("URL %q has user information", truncate(s))
	case u.Fragment != "" || strings.Contains(s, "#"):
		return "", fmt.Errorf("URL %q has a fragment", truncate(s))
	}
	return s, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
