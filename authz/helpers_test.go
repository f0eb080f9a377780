package authz_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// ap returns an AuthorizationPolicy document in namespace ns.
func ap(ns, name, spec string) string {
	return pol("AuthorizationPolicy", ns, name, "", spec)
}

// pol returns a policy document; meta is extra indented metadata lines.
func pol(kind, ns, name, meta, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\n", kind, name, ns)
	if meta != "" {
		b.WriteString(meta)
		if !strings.HasSuffix(meta, "\n") {
			b.WriteString("\n")
		}
	}
	b.WriteString("spec:\n")
	for _, l := range strings.Split(strings.Trim(spec, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func docs(ds ...string) string { return strings.Join(ds, "---\n") }

// req describes a request in test tables. The zero value is a plaintext GET
// of / on port 8080 from 10.1.1.1 to 10.2.2.2 with host web.foo.svc.
type req struct {
	principal string // peer URI SAN; empty for plaintext
	dns       string // peer DNS SAN
	ip        string
	remoteIP  string
	destIP    string
	port      uint32
	method    string
	path      string
	host      string
	headers   map[string]string
	sni       string
	auth      rbac.RequestAuth
	// filterMD is dynamic metadata set by other filters, by filter name.
	filterMD map[string]map[string]any
}

func (r req) build(t testing.TB) *envoyrbac.Request {
	t.Helper()
	or := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	out := &envoyrbac.Request{
		Headers: map[string][]string{
			":method":    {or(r.method, "GET")},
			":path":      {or(r.path, "/")},
			":authority": {or(r.host, "web.foo.svc")},
		},
		DirectRemoteIP:      netip.MustParseAddr(or(r.ip, "10.1.1.1")),
		DestinationIP:       netip.MustParseAddr(or(r.destIP, "10.2.2.2")),
		DestinationPort:     8080,
		RequestedServerName: r.sni,
	}
	if r.port != 0 {
		out.DestinationPort = r.port
	}
	if r.remoteIP != "" {
		out.RemoteIP = netip.MustParseAddr(r.remoteIP)
	}
	for k, v := range r.headers {
		out.Headers[strings.ToLower(k)] = append(out.Headers[strings.ToLower(k)], v)
	}
	if r.principal != "" || r.dns != "" {
		out.Peer = &envoyrbac.Peer{}
		if r.principal != "" {
			out.Peer.URISANs = []string{r.principal}
		}
		if r.dns != "" {
			out.Peer.DNSSANs = []string{r.dns}
		}
	}
	md, err := r.auth.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	out.Metadata = md
	for f, m := range r.filterMD {
		st, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		if out.Metadata == nil {
			out.Metadata = map[string]*structpb.Struct{}
		}
		out.Metadata[f] = st
	}
	return out
}

var defaultWorkload = policy.Workload{Namespace: "foo", Name: "web", Labels: map[string]string{"app": "web", "version": "v1"}}

// engineFor loads yaml into a new engine.
func engineFor(t testing.TB, yaml string, cfg authz.Config) *authz.Engine {
	t.Helper()
	rs, err := policy.Decode([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatalf("decoding policies: %v", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e := newEngine(t, cfg)
	for _, r := range rs {
		if _, err := e.Apply(r); err != nil && !strings.Contains(err.Error(), "CUSTOM") {
			t.Fatalf("applying %s: %v", r.Key(), err)
		}
	}
	return e
}

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func newEngine(t testing.TB, cfg authz.Config) *authz.Engine {
	t.Helper()
	e, err := authz.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
