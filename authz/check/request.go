package check

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// Request describes a request, or a connection, as policies speak of it.
// Empty fields are absent, except where a default is named.
type Request struct {
	// Principal is the peer's SPIFFE ID, and DNSSAN a DNS SAN of its
	// certificate; both empty means a plaintext connection.
	Principal, DNSSAN string
	// SourceIP is the peer's address; RemoteIP the original client's
	// (X-Forwarded-For), SourceIP when empty; DestinationIP the address the
	// connection arrived on. They are required, but RemoteIP.
	SourceIP, RemoteIP, DestinationIP string
	// Port is the destination port, 1 to 65535.
	Port uint
	// Method, Path (query included) and Host (:authority; the workload's
	// name when empty) are the HTTP request's; SNI is the TLS server name.
	Method, Path, Host, SNI string
	// Headers are further HTTP headers, each "name=value"; a name may
	// repeat.
	Headers []string
	// RequestPrincipal ("iss/sub"), Audiences, Presenter (azp) and Claims
	// describe the authenticated JWT. A claim is "name=value", a repeated
	// name gives more values, and "a.b=value" a nested claim.
	RequestPrincipal, Presenter string
	Audiences, Claims           []string
}

// Envoy returns what Envoy's RBAC filters of workload w would see of r.
func (r Request) Envoy(w policy.Workload) (*envoyrbac.Request, error) {
	if r.Port < 1 || r.Port > 65535 {
		return nil, fmt.Errorf("check: port %d: want 1 to 65535", r.Port)
	}
	host := r.Host
	if host == "" {
		host = w.Name
	}
	out := &envoyrbac.Request{
		Headers: map[string][]string{
			":method": {r.Method}, ":path": {r.Path}, ":authority": {host},
		},
		DestinationPort:     uint32(r.Port),
		RequestedServerName: r.SNI,
	}
	var err error
	if out.DirectRemoteIP, err = addr("source IP", r.SourceIP); err != nil {
		return nil, err
	}
	if out.DestinationIP, err = addr("destination IP", r.DestinationIP); err != nil {
		return nil, err
	}
	if r.RemoteIP != "" {
		if out.RemoteIP, err = addr("remote IP", r.RemoteIP); err != nil {
			return nil, err
		}
	}
	for _, h := range r.Headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("check: header %q: want name=value", h)
		}
		k = strings.ToLower(k)
		out.Headers[k] = append(out.Headers[k], v)
	}
	if r.Principal != "" || r.DNSSAN != "" {
		out.Peer = &envoyrbac.Peer{}
		if r.Principal != "" {
			out.Peer.URISANs = []string{r.Principal}
		}
		if r.DNSSAN != "" {
			out.Peer.DNSSANs = []string{r.DNSSAN}
		}
	}
	auth := rbac.RequestAuth{Principal: r.RequestPrincipal, Presenter: r.Presenter, Audiences: r.Audiences}
	for _, c := range r.Claims {
		k, v, ok := strings.Cut(c, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("check: claim %q: want name=value", c)
		}
		if auth.Claims == nil {
			auth.Claims = map[string]any{}
		}
		if err := addClaim(auth.Claims, strings.Split(k, "."), v); err != nil {
			return nil, fmt.Errorf("check: claim %q: %w", c, err)
		}
	}
	if out.Metadata, err = auth.Metadata(); err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return out, nil
}

func addr(what, v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("check: %s %q: not an IP address", what, v)
	}
	return a, nil
}

// errValueAndObject is a claim given both a value and nested claims.
var errValueAndObject = errors.New("claim is both a value and an object")

// addClaim adds value to the claim at path, nesting maps for a.b.c.
func addClaim(m map[string]any, path []string, value string) error {
	if len(path) == 1 {
		switch cur := m[path[0]].(type) {
		case nil:
			m[path[0]] = []string{value}
		case []string:
			m[path[0]] = append(cur, value)
		default:
			return errValueAndObject
		}
		return nil
	}
	sub, ok := m[path[0]].(map[string]any)
	if !ok {
		if m[path[0]] != nil {
			return errValueAndObject
		}
		sub = map[string]any{}
		m[path[0]] = sub
	}
	return addClaim(sub, path[1:], value)
}
