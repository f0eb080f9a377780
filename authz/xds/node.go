package xds

import (
	"fmt"
	"strings"

	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/dnsname"
)

// maxNodeIDLength bounds a node ID; Istio's are far shorter.
const maxNodeIDLength = 1024

// Proxy is the workload a node ID names.
type Proxy struct {
	// Type is "sidecar" or "router".
	Type      string
	IP        string
	Pod       string
	Namespace string
}

// ParseNodeID parses a node ID in Istio's form
// "sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local" (the
// domain may be any cluster domain; the type may also be "router").
func ParseNodeID(id string) (Proxy, error) {
	if len(id) > maxNodeIDLength {
		return Proxy{}, fmt.Errorf("node ID is %d bytes, more than the limit of %d", len(id), maxNodeIDLength)
	}
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return Proxy{}, fmt.Errorf("node ID %q: want <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>", clip.String(id, 128))
	}
	p := Proxy{Type: parts[0], IP: parts[1]}
	if p.Type != "sidecar" && p.Type != "router" {
		return Proxy{}, fmt.Errorf("node ID %q: type %q is not sidecar or router", clip.String(id, 128), clip.String(p.Type, 32))
	}
	i := strings.LastIndexByte(parts[2], '.')
	if i <= 0 || i == len(parts[2])-1 {
		return Proxy{}, fmt.Errorf("node ID %q: %q is not <pod>.<namespace>", clip.String(id, 128), clip.String(parts[2], 128))
	}
	p.Pod, p.Namespace = parts[2][:i], parts[2][i+1:]
	ns, _, _ := strings.Cut(parts[3], ".")
	if ns != p.Namespace {
		return Proxy{}, fmt.Errorf("node ID %q: domain %q is not in namespace %q", clip.String(id, 128), clip.String(parts[3], 128), p.Namespace)
	}
	// A pod's name is an RFC 1123 subdomain, a namespace's a label, as
	// Kubernetes requires of them.
	if !dnsname.IsSubdomain(p.Pod) || !dnsname.IsLabel(p.Namespace) {
		return Proxy{}, fmt.Errorf("node ID %q: invalid pod or namespace name", clip.String(id, 128))
	}
	return p, nil
}
