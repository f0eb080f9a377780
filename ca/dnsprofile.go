package ca

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/dnsname"
)

// Limits on a DNS profile, so that a typo in a manifest cannot turn the CA
// into a general-purpose server-certificate issuer.
const (
	// MaxDNSProfileAccounts is the most service accounts a DNSProfile may
	// name.
	MaxDNSProfileAccounts = 32
	// MaxDNSNamesPerAccount is the most DNS names one service account may
	// be allowed, and so the most a CSR may ask for.
	MaxDNSNamesPerAccount = 16
	// maxDNSProfileEntry bounds one "namespace/sa=names" entry, in bytes.
	maxDNSProfileEntry = 4096
)

// DNSProfile says which service accounts may have which DNS names in their
// certificate: istiod's serving certificate, or that of any control-plane
// service the operator names. Every other caller asking for a DNS SAN is
// refused, as is a name outside its service account's list. The zero value
// (and nil) allows no DNS name to anyone.
//
// Names are RFC 1123 host names, written in lowercase (the profile
// lowercases what it is given; a CSR must ask for the lowercase form), with
// no wildcard: a wildcard would let one service account serve every name of
// a zone, and istiod needs only its service names.
type DNSProfile struct {
	// allow maps a SPIFFE ID path, /ns/<namespace>/sa/<name>, to its
	// allowed names, sorted.
	allow map[string][]string
}

// ParseDNSProfile parses entries of the form
//
//	namespace/serviceaccount=name[,name...]
//
// such as "istio-system/istiod=istiod.istio-system.svc,istiod.istio-system.svc.cluster.local".
// One argument may hold several entries separated by ';' (the form an
// environment variable takes). A service account named twice, a name that
// is not a valid DNS host name, a wildcard, or more than
// MaxDNSProfileAccounts accounts or MaxDNSNamesPerAccount names for one of
// them, is an error that names the entry.
func ParseDNSProfile(entries ...string) (*DNSProfile, error) {
	p := &DNSProfile{allow: map[string][]string{}}
	for _, arg := range entries {
		for entry := range strings.SplitSeq(arg, ";") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			if err := p.add(entry); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

func (p *DNSProfile) add(entry string) error {
	if len(entry) > maxDNSProfileEntry {
		return fmt.Errorf("ca: DNS SAN profile entry of %d bytes is over the %d-byte limit", len(entry), maxDNSProfileEntry)
	}
	account, list, ok := strings.Cut(entry, "=")
	if !ok {
		return fmt.Errorf("ca: DNS SAN profile entry %q: want namespace/serviceaccount=name[,name...]", entry)
	}
	ns, sa, ok := strings.Cut(strings.TrimSpace(account), "/")
	if !ok {
		return fmt.Errorf("ca: DNS SAN profile entry %q: %q is not namespace/serviceaccount", entry, account)
	}
	if !dnsname.IsLabel(ns) {
		return fmt.Errorf("ca: DNS SAN profile entry %q: namespace %q is not a Kubernetes namespace name", entry, ns)
	}
	if !dnsname.IsSubdomain(sa) {
		return fmt.Errorf("ca: DNS SAN profile entry %q: service account %q is not a Kubernetes service account name", entry, sa)
	}
	key := "/ns/" + ns + "/sa/" + sa
	if _, dup := p.allow[key]; dup {
		return fmt.Errorf("ca: DNS SAN profile names %s/%s twice; give all its names in one entry", ns, sa)
	}
	if len(p.allow) >= MaxDNSProfileAccounts {
		return fmt.Errorf("ca: DNS SAN profile names more than %d service accounts", MaxDNSProfileAccounts)
	}
	var names []string
	for name := range strings.SplitSeq(list, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		if err := dnsname.CheckHost(name); err != nil {
			return fmt.Errorf("ca: DNS SAN profile entry %q: %v", entry, err)
		}
		if slices.Contains(names, name) {
			return fmt.Errorf("ca: DNS SAN profile entry %q: %q is listed twice", entry, name)
		}
		if len(names) == MaxDNSNamesPerAccount {
			return fmt.Errorf("ca: DNS SAN profile entry %q: more than %d names", entry, MaxDNSNamesPerAccount)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	p.allow[key] = names
	return nil
}

// Allowed returns the DNS names id may have, sorted; nil when it may have
// none. Only the path of id is compared: the Issuer signs for its own trust
// domain alone.
func (p *DNSProfile) Allowed(id spiffeid.ID) []string {
	if p == nil {
		return nil
	}
	return p.allow[id.Path()]
}

// Len is the number of service accounts the profile names.
func (p *DNSProfile) Len() int {
	if p == nil {
		return 0
	}
	return len(p.allow)
}

// String lists the profile as ParseDNSProfile reads it, entries sorted.
func (p *DNSProfile) String() string {
	if p == nil {
		return ""
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(p.allow)) {
		if i > 0 {
			b.WriteByte(';')
		}
		parts := strings.Split(k, "/") // "", "ns", ns, "sa", sa
		fmt.Fprintf(&b, "%s/%s=%s", parts[2], parts[4], strings.Join(p.allow[k], ","))
	}
	return b.String()
}

// checkDNSNames decides the DNS SANs a CSR asks for on behalf of id:
// every one must be in id's list. The reason names the first name refused.
func (p *DNSProfile) checkDNSNames(names []string, id spiffeid.ID) error {
	allowed := p.Allowed(id)
	if len(allowed) == 0 {
		return reject(ReasonForbiddenSAN, "CSR asks for DNS SAN %q; only the caller's SPIFFE ID %s may be requested (no DNS SAN profile names this service account)", truncateName(names[0]), id)
	}
	if len(names) > len(allowed) {
		return reject(ReasonDNSNotAllowed, "CSR asks for %d DNS SANs; %s is allowed %d", len(names), id, len(allowed))
	}
	for i, name := range names {
		if !slices.Contains(allowed, name) {
			return reject(ReasonDNSNotAllowed, "CSR asks for DNS SAN %q, which is not in the DNS SAN profile of %s (allowed: %s)", truncateName(name), id, strings.Join(allowed, ", "))
		}
		if slices.Contains(names[:i], name) {
			return reject(ReasonDNSNotAllowed, "CSR asks for DNS SAN %q twice", name)
		}
	}
	return nil
}

// truncateName keeps a hostile name from filling a log line.
func truncateName(s string) string { return clip.String(s, 256) }
