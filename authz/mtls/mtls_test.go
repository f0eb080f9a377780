package mtls_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
)

// pa returns a PeerAuthentication document. created orders policies in a
// scope: a smaller value is older.
func pa(ns, name string, created int, spec string) string {
	ts := time.Date(2026, 1, 1, 0, created, 0, 0, time.UTC).Format(time.RFC3339)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: %s\n  namespace: %s\n  creationTimestamp: %q\nspec:\n", name, ns, ts)
	for _, l := range strings.Split(strings.Trim(spec, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func decode(t *testing.T, docs ...string) []*policy.Resource {
	t.Helper()
	rs, err := policy.Decode([]byte(strings.Join(docs, "---\n")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

var web = policy.Workload{Namespace: "foo", Name: "web", Labels: map[string]string{"app": "web"}}

func TestResolve(t *testing.T) {
	key := func(ns, name string) policy.Key {
		return policy.Key{Kind: policy.KindPeerAuthentication, Namespace: ns, Name: name}
	}
	tests := []struct {
		name      string
		docs      []string
		workload  policy.Workload
		want      mtls.Setting
		wantPorts map[uint32]mtls.Setting
	}{
		{
			name: "no policy is permissive",
			want: mtls.Setting{Mode: mtls.Permissive, Scope: mtls.ScopeDefault},
		},
		{
			name: "mesh policy",
			docs: []string{pa("istio-system", "mesh", 0, `mtls: {mode: STRICT}`)},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeMesh, Policy: key("istio-system", "mesh")},
		},
		{
			name: "namespace over mesh",
			docs: []string{
				pa("istio-system", "mesh", 0, `mtls: {mode: STRICT}`),
				pa("foo", "ns", 0, `mtls: {mode: DISABLE}`),
			},
			want: mtls.Setting{Mode: mtls.Disable, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")},
		},
		{
			name: "workload over namespace over mesh",
			docs: []string{
				pa("istio-system", "mesh", 0, `mtls: {mode: DISABLE}`),
				pa("foo", "ns", 0, `mtls: {mode: PERMISSIVE}`),
				pa("foo", "wl", 0, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
		},
		{
			name: "workload selector that does not match",
			docs: []string{
				pa("foo", "ns", 0, `mtls: {mode: STRICT}`),
				pa("foo", "wl", 0, "selector: {matchLabels: {app: other}}\nmtls: {mode: DISABLE}"),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")},
		},
		{
			name: "other namespace does not apply",
			docs: []string{pa("bar", "ns", 0, `mtls: {mode: STRICT}`)},
			want: mtls.Setting{Mode: mtls.Permissive, Scope: mtls.ScopeDefault},
		},
		{
			name: "oldest namespace policy wins",
			docs: []string{
				pa("foo", "newer", 5, `mtls: {mode: DISABLE}`),
				pa("foo", "older", 1, `mtls: {mode: STRICT}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeNamespace, Policy: key("foo", "older")},
		},
		{
			name: "oldest workload policy wins",
			docs: []string{
				pa("foo", "a-newer", 9, "selector: {matchLabels: {app: web}}\nmtls: {mode: DISABLE}"),
				pa("foo", "z-older", 2, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeWorkload, Policy: key("foo", "z-older")},
		},
		{
			name: "oldest mesh policy wins",
			docs: []string{
				pa("istio-system", "b", 3, `mtls: {mode: DISABLE}`),
				pa("istio-system", "a", 4, `mtls: {mode: STRICT}`),
			},
			want: mtls.Setting{Mode: mtls.Disable, Scope: mtls.ScopeMesh, Policy: key("istio-system", "b")},
		},
		{
			name: "same age: name decides",
			docs: []string{
				pa("foo", "b", 0, `mtls: {mode: DISABLE}`),
				pa("foo", "a", 0, `mtls: {mode: STRICT}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeNamespace, Policy: key("foo", "a")},
		},
		{
			name: "workload UNSET inherits namespace",
			docs: []string{
				pa("foo", "ns", 0, `mtls: {mode: DISABLE}`),
				pa("foo", "wl", 0, "selector: {matchLabels: {app: web}}\nmtls: {mode: UNSET}"),
			},
			want: mtls.Setting{Mode: mtls.Disable, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")},
		},
		{
			name: "namespace UNSET inherits mesh",
			docs: []string{
				pa("istio-system", "mesh", 0, `mtls: {mode: STRICT}`),
				pa("foo", "ns", 0, `{}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeMesh, Policy: key("istio-system", "mesh")},
		},
		{
			name: "mesh UNSET is permissive",
			docs: []string{pa("istio-system", "mesh", 0, `mtls: {mode: UNSET}`)},
			want: mtls.Setting{Mode: mtls.Permissive, Scope: mtls.ScopeDefault},
		},
		{
			name: "an unset oldest policy still takes the scope",
			docs: []string{
				pa("foo", "older-unset", 0, `{}`),
				pa("foo", "newer", 1, `mtls: {mode: DISABLE}`),
				pa("istio-system", "mesh", 0, `mtls: {mode: STRICT}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeMesh, Policy: key("istio-system", "mesh")},
		},
		{
			name: "port-level from the workload policy",
			docs: []string{
				pa("foo", "ns", 0, `mtls: {mode: STRICT}`),
				pa("foo", "wl", 0, `
selector: {matchLabels: {app: web}}
portLevelMtls:
  8080: {mode: DISABLE}
  9090: {mode: PERMISSIVE}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")},
			wantPorts: map[uint32]mtls.Setting{
				8080: {Mode: mtls.Disable, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
				9090: {Mode: mtls.Permissive, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
			},
		},
		{
			name: "port-level UNSET inherits the workload mode",
			docs: []string{
				pa("istio-system", "mesh", 0, `mtls: {mode: PERMISSIVE}`),
				pa("foo", "wl", 0, `
selector: {matchLabels: {app: web}}
mtls: {mode: STRICT}
portLevelMtls:
  8080: {mode: UNSET}
  9000: {mode: DISABLE}`),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
			wantPorts: map[uint32]mtls.Setting{
				8080: {Mode: mtls.Strict, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
				9000: {Mode: mtls.Disable, Scope: mtls.ScopeWorkload, Policy: key("foo", "wl")},
			},
		},
		{
			name: "port-level UNSET inherits an inherited mode",
			docs: []string{
				pa("foo", "ns", 0, `mtls: {mode: DISABLE}`),
				pa("foo", "wl", 0, "selector: {matchLabels: {app: web}}\nportLevelMtls:\n  8080: {}"),
			},
			want:      mtls.Setting{Mode: mtls.Disable, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")},
			wantPorts: map[uint32]mtls.Setting{8080: {Mode: mtls.Disable, Scope: mtls.ScopeNamespace, Policy: key("foo", "ns")}},
		},
		{
			name: "port-level of a newer workload policy is ignored",
			docs: []string{
				pa("foo", "old", 0, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),
				pa("foo", "new", 1, "selector: {matchLabels: {app: web}}\nportLevelMtls:\n  8080: {mode: DISABLE}"),
			},
			want: mtls.Setting{Mode: mtls.Strict, Scope: mtls.ScopeWorkload, Policy: key("foo", "old")},
		},
		{
			name: "selector policy in the root namespace is ignored",
			docs: []string{
				pa("istio-system", "sel", 0, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),
			},
			want: mtls.Setting{Mode: mtls.Permissive, Scope: mtls.ScopeDefault},
		},
		{
			name:     "selector policy in the root namespace is ignored for root workloads too",
			workload: policy.Workload{Namespace: "istio-system", Name: "gw", Labels: map[string]string{"app": "web"}},
			docs: []string{
				pa("istio-system", "mesh", 0, `mtls: {mode: DISABLE}`),
				pa("istio-system", "sel", 0, "selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}"),
			},
			want: mtls.Setting{Mode: mtls.Disable, Scope: mtls.ScopeMesh, Policy: key("istio-system", "mesh")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.workload
			if w.Namespace == "" {
				w = web
			}
			got := mtls.Resolve(decode(t, tt.docs...), w, "istio-system")
			if got.Workload != tt.want {
				t.Errorf("workload setting = %+v, want %+v", got.Workload, tt.want)
			}
			if len(got.Ports) != len(tt.wantPorts) {
				t.Fatalf("ports = %+v, want %+v", got.Ports, tt.wantPorts)
			}
			for p, s := range tt.wantPorts {
				if got.Ports[p] != s {
					t.Errorf("port %d = %+v, want %+v", p, got.Ports[p], s)
				}
				if got.Mode(p) != s.Mode {
					t.Errorf("Mode(%d) = %v, want %v", p, got.Mode(p), s.Mode)
				}
			}
			if got.Mode(1) != tt.want.Mode {
				t.Errorf("Mode(1) = %v, want %v", got.Mode(1), tt.want.Mode)
			}
		})
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name   string
		result mtls.Result
		// want lists the chains as "name port transport tls/plain".
		want       []string
		wantInspct bool
	}{
		{
			name:       "strict",
			result:     mtls.Result{Workload: mtls.Setting{Mode: mtls.Strict}},
			want:       []string{"castellan-inbound-mtls 0 tls mtls"},
			wantInspct: true,
		},
		{
			name:       "permissive",
			result:     mtls.Result{Workload: mtls.Setting{Mode: mtls.Permissive}},
			want:       []string{"castellan-inbound-mtls 0 tls mtls", "castellan-inbound-plaintext 0 raw_buffer plain"},
			wantInspct: true,
		},
		{
			name:   "disable",
			result: mtls.Result{Workload: mtls.Setting{Mode: mtls.Disable}},
			want:   []string{"castellan-inbound-plaintext 0  plain"},
		},
		{
			name: "port overrides come first",
			result: mtls.Result{Workload: mtls.Setting{Mode: mtls.Permissive}, Ports: map[uint32]mtls.Setting{
				9090: {Mode: mtls.Disable}, 8080: {Mode: mtls.Strict},
			}},
			want: []string{
				"castellan-inbound-8080-mtls 8080 tls mtls",
				"castellan-inbound-9090-plaintext 9090  plain",
				"castellan-inbound-mtls 0 tls mtls",
				"castellan-inbound-plaintext 0 raw_buffer plain",
			},
			wantInspct: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := mtls.Render(tt.result, mtls.RenderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range l.FilterChains {
				got = append(got, describe(t, c))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("chains:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if (len(l.ListenerFilters) == 1) != tt.wantInspct {
				t.Errorf("listener filters = %v, want tls_inspector %v", l.ListenerFilters, tt.wantInspct)
			}
		})
	}
}

// describe summarizes a chain, checking its TLS context on the way.
func describe(t *testing.T, c *listenerv3.FilterChain) string {
	t.Helper()
	m := c.GetFilterChainMatch()
	kind := "plain"
	if ts := c.GetTransportSocket(); ts != nil {
		var ctx tlsv3.DownstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
			t.Fatal(err)
		}
		if err := ctx.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		cc := ctx.GetCommonTlsContext()
		switch {
		case !ctx.GetRequireClientCertificate().GetValue():
			t.Errorf("%s: client certificate not required", c.GetName())
		case len(cc.GetTlsCertificateSdsSecretConfigs()) != 1 || cc.GetTlsCertificateSdsSecretConfigs()[0].GetName() != mtls.CertificateName:
			t.Errorf("%s: certificate SDS = %v", c.GetName(), cc.GetTlsCertificateSdsSecretConfigs())
		case cc.GetValidationContextSdsSecretConfig().GetName() != mtls.ValidationName:
			t.Errorf("%s: validation SDS = %v", c.GetName(), cc.GetValidationContextSdsSecretConfig())
		case cc.GetValidationContextSdsSecretConfig().GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != mtls.DefaultSDSCluster:
			t.Errorf("%s: SDS cluster wrong", c.GetName())
		}
		kind = "mtls"
	}
	return fmt.Sprintf("%s %d %s %s", c.GetName(), m.GetDestinationPort().GetValue(), m.GetTransportProtocol(), kind)
}
