// Package envoyrbac evaluates Envoy RBAC filter configurations
// (envoy.filters.http.rbac and envoy.filters.network.rbac) against a request
// the way Envoy does. It reads only the Envoy configuration, never the policy
// it was generated from, so checking a request with it checks the
// translation too.
package envoyrbac

import (
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// Peer is what Envoy knows about the peer of a TLS connection.
type Peer struct {
	// URISANs are the URI SANs of the peer certificate (the SPIFFE ID).
	URISANs []string
	// DNSSANs are the DNS SANs of the peer certificate.
	DNSSANs []string
	// Subject is the peer certificate's subject, as Envoy formats it.
	Subject string
}

// Request is what the RBAC filters see of a request or connection.
type Request struct {
	// Headers holds the HTTP headers, pseudo-headers (":method", ":path",
	// ":authority") included. Names are matched case-insensitively. Nil for
	// a TCP connection.
	Headers map[string][]string

	// DirectRemoteIP is the address of the downstream peer.
	DirectRemoteIP netip.Addr
	// RemoteIP is the original client address (from X-Forwarded-For or
	// the PROXY protocol). The zero value means DirectRemoteIP.
	RemoteIP netip.Addr
	// DestinationIP and DestinationPort are the local address the
	// connection arrived on.
	DestinationIP   netip.Addr
	DestinationPort uint32
	// RequestedServerName is the SNI of a TLS connection.
	RequestedServerName string

	// Peer is set for a TLS connection; nil for plaintext.
	Peer *Peer

	// Metadata is the dynamic metadata set by earlier filters, by filter
	// name (for example the request authentication results).
	Metadata map[string]*structpb.Struct
}

// header returns all values of the named header joined by ",", as Envoy's
// header matchers see them, and whether the header is present.
func (r *Request) header(name string) (string, bool) {
	if r.Headers == nil {
		return "", false
	}
	var vals []string
	found := false
	for k, v := range r.Headers {
		if strings.EqualFold(k, name) {
			vals = append(vals, v...)
			found = true
		}
	}
	if !found {
		return "", false
	}
	return strings.Join(vals, ","), true
}

func (r *Request) remoteIP() netip.Addr {
	if r.RemoteIP.IsValid() {
		return r.RemoteIP
	}
	return r.DirectRemoteIP
}

// path returns the :path header without its query and fragment.
func (r *Request) path() (string, bool) {
	p, ok := r.header(":path")
	if !ok {
		return "", false
	}
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return p, true
}
