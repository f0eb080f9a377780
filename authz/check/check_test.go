package check_test

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/castellan-mesh/castellan/authz/check"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/policy"
)

// base is a request as the command's defaults describe it.
func base() check.Request {
	return check.Request{SourceIP: "10.0.0.1", DestinationIP: "10.0.0.2", Port: 8080, Method: "GET", Path: "/"}
}

var web = policy.Workload{Namespace: "shop", Name: "web"}

func TestEnvoyRequest(t *testing.T) {
	r := base()
	r.Principal = "spiffe://cluster.local/ns/shop/sa/fe"
	r.RemoteIP = "203.0.113.9"
	r.Headers = []string{"X-User=alice", "x-user=bob"}
	r.RequestPrincipal = "https://issuer/alice"
	r.Claims = []string{"groups=admin", "groups=dev", "org.team=payments"}
	got, err := r.Envoy(web)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case got.Headers[":authority"][0] != "web":
		t.Errorf(":authority = %v, want the workload name", got.Headers[":authority"])
	case strings.Join(got.Headers["x-user"], ",") != "alice,bob":
		t.Errorf("x-user = %v, want both values, the name lower-cased", got.Headers["x-user"])
	case got.DirectRemoteIP != netip.MustParseAddr("10.0.0.1") || got.RemoteIP != netip.MustParseAddr("203.0.113.9"):
		t.Errorf("addresses: direct %v remote %v", got.DirectRemoteIP, got.RemoteIP)
	case got.Peer == nil || got.Peer.URISANs[0] != r.Principal || got.Peer.DNSSANs != nil:
		t.Errorf("peer = %+v", got.Peer)
	case got.DestinationPort != 8080:
		t.Errorf("port = %d", got.DestinationPort)
	}
	payload := got.Metadata["envoy.filters.http.jwt_authn"].GetFields()["payload"].GetStructValue().GetFields()
	if payload["iss"].GetStringValue() != "https://issuer" || payload["sub"].GetStringValue() != "alice" ||
		len(payload["groups"].GetListValue().GetValues()) != 2 ||
		payload["org"].GetStructValue().GetFields()["team"] == nil {
		t.Errorf("JWT payload = %v", payload)
	}

	plain, err := base().Envoy(web)
	if err != nil || plain.Peer != nil || plain.RemoteIP.IsValid() {
		t.Errorf("plaintext request: peer %+v remote %v, %v", plain.Peer, plain.RemoteIP, err)
	}
}

func TestEnvoyRequestRefuses(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*check.Request)
		wantErr string
	}{
		{"port 0", func(r *check.Request) { r.Port = 0 }, "port 0"},
		{"port too big", func(r *check.Request) { r.Port = 65536 }, "want 1 to 65535"},
		{"source IP", func(r *check.Request) { r.SourceIP = "web" }, `source IP "web": not an IP address`},
		{"destination IP", func(r *check.Request) { r.DestinationIP = "" }, "destination IP"},
		{"remote IP", func(r *check.Request) { r.RemoteIP = "10.0.0.300" }, "remote IP"},
		{"header without value", func(r *check.Request) { r.Headers = []string{"x-user"} }, `header "x-user": want name=value`},
		{"header without name", func(r *check.Request) { r.Headers = []string{"=v"} }, "want name=value"},
		{"claim without value", func(r *check.Request) { r.Claims = []string{"groups"} }, `claim "groups"`},
		{"claim value then object", func(r *check.Request) { r.Claims = []string{"a=1", "a.b=2"} }, "both a value and an object"},
		{"claim object then value", func(r *check.Request) { r.Claims = []string{"a.b=2", "a=1"} }, "both a value and an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base()
			tt.edit(&r)
			_, err := r.Envoy(web)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestReport(t *testing.T) {
	d := envoyrbac.Decision{
		Allowed: false, Policy: "ns[shop]-policy[deny-debug]-rule[1]", Action: rbacv3.RBAC_DENY, Filter: 1,
		Reason: "matched a DENY policy",
		Logged: []string{"ns[shop]-policy[audit]-rule[0]"},
		Filters: []envoyrbac.FilterResult{
			{Index: 0, Shadow: &envoyrbac.ShadowResult{Action: rbacv3.RBAC_DENY, Allowed: false, Policy: "ns[shop]-policy[dry]-rule[0]"}},
			{Index: 1},
		},
	}
	var b bytes.Buffer
	if err := check.WriteText(&b, d); err != nil {
		t.Fatal(err)
	}
	want := `DENY
  decided by: ns[shop]-policy[deny-debug]-rule[1] (AuthorizationPolicy shop/deny-debug, rule 1)
  reason:     matched a DENY policy
  audited by: ns[shop]-policy[audit]-rule[0] (AuthorizationPolicy shop/audit, rule 0)
  dry-run:    DENY rules would deny (ns[shop]-policy[dry]-rule[0] (AuthorizationPolicy shop/dry, rule 0))
`
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
	r := check.NewReport(d)
	if r.Decision != "DENY" || r.Action != "DENY" || len(r.Shadow) != 1 || r.Shadow[0].Filter != 0 || r.Shadow[0].Allowed {
		t.Errorf("report = %+v", r)
	}
	if r := check.NewReport(envoyrbac.Decision{Allowed: true, Filter: -1}); r.Decision != "ALLOW" || r.Action != "" {
		t.Errorf("report with no deciding filter = %+v", r)
	}
}

// FuzzEnvoyRequest: any headers and claims give a request or an error,
// never a panic, and a request keeps every header value given.
func FuzzEnvoyRequest(f *testing.F) {
	f.Add("x-user=alice", "a.b=1", "a=2")
	f.Add("=", "..=", ".a=b")
	f.Fuzz(func(t *testing.T, header, claim1, claim2 string) {
		r := base()
		r.Headers = []string{header}
		r.Claims = []string{claim1, claim2}
		got, err := r.Envoy(web)
		if err != nil {
			return
		}
		name, value, _ := strings.Cut(header, "=")
		if vs := got.Headers[strings.ToLower(name)]; len(vs) == 0 || vs[len(vs)-1] != value {
			t.Fatalf("header %q: got %v", header, vs)
		}
	})
}
