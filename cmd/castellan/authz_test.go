package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files")

const authzTestdata = "../../authz/testdata"

// runAuthzCLI runs "castellan authz args..." and returns the exit code and
// outputs.
func runAuthzCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"authz"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

var frontend = []string{"--policies", filepath.Join(authzTestdata, "mesh.yaml"), "--workload", "shop/fe", "--labels", "app=frontend,version=v2"}

func TestAuthzTranslateGolden(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			code, out, errOut := runAuthzCLI(t, append([]string{"translate", "--format", format}, frontend...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden := filepath.Join(authzTestdata, "golden", "translate-frontend."+format)
			if *updateGolden {
				if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if out != string(want) {
				t.Errorf("output differs from %s (run with -update to accept):\n%s", golden, out)
			}
			if !strings.Contains(errOut, "note: ns[shop]-policy[frontend]-rule[0]: left out of TCP filters") {
				t.Errorf("stderr lacks the TCP note: %s", errOut)
			}
		})
	}
}

// TestAuthzTranslateIsEnvoyConfig reads the printed filters back as Envoy
// would (protojson, unknown fields rejected), validates them and evaluates
// a request with them.
func TestAuthzTranslateIsEnvoyConfig(t *testing.T) {
	code, out, errOut := runAuthzCLI(t, append([]string{"translate"}, frontend...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc struct {
		HTTPFilters    []json.RawMessage `json:"httpFilters"`
		NetworkFilters []json.RawMessage `json:"networkFilters"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	var httpFilters []*hcmv3.HttpFilter
	for _, raw := range doc.HTTPFilters {
		var f hcmv3.HttpFilter
		if err := protojson.Unmarshal(raw, &f); err != nil {
			t.Fatal(err)
		}
		if err := f.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		httpFilters = append(httpFilters, &f)
	}
	var netFilters []*listenerv3.Filter
	for _, raw := range doc.NetworkFilters {
		var f listenerv3.Filter
		if err := protojson.Unmarshal(raw, &f); err != nil {
			t.Fatal(err)
		}
		netFilters = append(netFilters, &f)
	}
	if len(httpFilters) != 3 || len(netFilters) != 3 {
		t.Fatalf("got %d HTTP and %d network filters, want 3 and 3 (AUDIT, DENY, ALLOW)", len(httpFilters), len(netFilters))
	}
	ev := envoyrbac.New()
	d, err := ev.EvaluateHTTP(httpFilters, &envoyrbac.Request{
		Headers:        map[string][]string{":method": {"GET"}, ":path": {"/"}, ":authority": {"shop.example.com"}},
		DirectRemoteIP: netip.MustParseAddr("192.0.2.1"),
		Peer:           &envoyrbac.Peer{URISANs: []string{"spiffe://cluster.local/ns/ingress/sa/gateway"}},
	})
	if err != nil || !d.Allowed {
		t.Errorf("decision %+v, %v", d, err)
	}
}

func TestAuthzCheck(t *testing.T) {
	gw := "spiffe://cluster.local/ns/ingress/sa/gateway"
	tests := []struct {
		name     string
		args     []string
		wantCode int
		// wantOut must appear in stdout.
		wantOut []string
	}{
		{"gateway GET is allowed", []string{"--source-principal", gw, "--path", "/static/app.css", "--host", "shop.example.com"}, 0,
			[]string{"ALLOW", "decided by: ns[shop]-policy[frontend]-rule[0] (AuthorizationPolicy shop/frontend, rule 0)"}},
		{"host match ignores case", []string{"--source-principal", gw, "--host", "WWW.Shop.Example.COM"}, 0, []string{"ALLOW"}},
		{"path template", []string{"--source-principal", gw, "--host", "shop.example.com", "--path", "/api/v2/items"}, 0, []string{"ALLOW"}},
		{"path template too deep", []string{"--source-principal", gw, "--host", "shop.example.com", "--path", "/api/v2/x/items"}, exitDenied,
			[]string{"DENY", "reason:     denied: ALLOW policies exist and none matched"}},
		{"gateway POST is denied", []string{"--source-principal", gw, "--method", "POST", "--host", "shop.example.com"}, exitDenied,
			[]string{"DENY", "audited by: ns[shop]-policy[audit-writes]-rule[0]"}},
		{"plaintext is denied", []string{"--host", "shop.example.com"}, exitDenied, []string{"DENY"}},
		{"mesh-wide deny wins", []string{"--source-principal", gw, "--host", "shop.example.com", "--path", "/debug/vars"}, exitDenied,
			[]string{"decided by: ns[istio-system]-policy[deny-debug]-rule[0] (AuthorizationPolicy istio-system/deny-debug, rule 0)"}},
		{"monitoring scrapes metrics", []string{"--source-principal", "spiffe://cluster.local/ns/monitoring/sa/prometheus", "--port", "15090"}, 0,
			[]string{"decided by: ns[shop]-policy[frontend]-rule[1]"}},
		// Over TCP the mesh-wide DENY on /debug paths loses its HTTP-only
		// paths and so denies every connection, as in Istio.
		{"an HTTP deny broadened for TCP denies every connection", []string{"--tcp", "--source-principal", "spiffe://cluster.local/ns/monitoring/sa/prometheus", "--port", "15090"}, exitDenied,
			[]string{"DENY", "decided by: ns[istio-system]-policy[deny-debug]-rule[0]"}},
		{"ops with a JWT claim and tenant header", []string{"--source-ip", "10.1.2.3", "--claim", "groups=dev", "--claim", "groups=ops", "--header", "X-Shop-Tenant=corp-9"}, 0,
			[]string{"decided by: ns[shop]-policy[frontend]-rule[2]"}},
		{"ops from an excluded block", []string{"--source-ip", "10.66.2.3", "--claim", "groups=ops", "--header", "x-shop-tenant=acme"}, exitDenied, []string{"DENY"}},
		{"dry-run deny is reported, not enforced", []string{"--source-principal", "spiffe://other.td/ns/x/sa/y", "--sni", "evil.example", "--port", "15090"}, exitDenied,
			[]string{"dry-run:    DENY rules would deny (ns[shop]-policy[block-legacy]-rule[0]"}},
		{"json output", []string{"--format", "json", "--source-principal", gw, "--host", "shop.example.com"}, 0,
			[]string{`"decision": "ALLOW"`, `"policy": "ns[shop]-policy[frontend]-rule[0]"`, `"action": "ALLOW"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runAuthzCLI(t, append(append([]string{"check"}, frontend...), tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, out, errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestAuthzMTLS(t *testing.T) {
	code, out, errOut := runAuthzCLI(t, append([]string{"mtls"}, frontend...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := "workload shop/fe\n  all ports: STRICT     (namespace policy shop/shop)\n  port 15090: PERMISSIVE (workload policy shop/frontend-metrics)\n"
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
	code, out, _ = runAuthzCLI(t, "mtls", "--policies", filepath.Join(authzTestdata, "mesh.yaml"), "--workload", "other/x", "--format", "json")
	if code != 0 || !strings.Contains(out, `"mode": "PERMISSIVE"`) || !strings.Contains(out, "mesh policy istio-system/default") {
		t.Errorf("exit %d, json:\n%s", code, out)
	}
	code, out, _ = runAuthzCLI(t, append([]string{"mtls", "--listener", "--format", "json"}, frontend...)...)
	for _, w := range []string{`"envoy.filters.listener.tls_inspector"`, `"castellan-inbound-15090-plaintext"`, `"requireClientCertificate": true`, `"name": "ROOTCA"`, `"clusterName": "sds-grpc"`} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("exit %d, listener output lacks %s", code, w)
		}
	}
}

func TestAuthzErrors(t *testing.T) {
	bad := filepath.Join(authzTestdata, "bad.yaml")
	code, _, errOut := runAuthzCLI(t, "translate", "--policies", bad, "--policies", filepath.Join(authzTestdata, "mesh.yaml"), "--workload", "shop/fe")
	if code != exitPolicyProblems {
		t.Errorf("bad policies: exit %d, want %d", code, exitPolicyProblems)
	}
	for _, w := range []string{
		`bad.yaml: document 1 (line 2): AuthorizationPolicy shop/unknown-field: spec.rules[0].from[0].source.principal: unknown field "principal"`,
		`document 2 (line 11): AuthorizationPolicy shop/bad-cidr: spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR "10.0.0.0/40"`,
		`spec.rules[0].to[0].operation.ports[0]: invalid port "http"`,
		`spec.rules[0].to[0].operation.paths[0]: bad wildcard in "/a*b"`,
		`spec.rules[0].when[0].key: malformed header key "request.headers[x tenant]"`,
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	usage := [][]string{
		{"translate", "--workload", "a/b"},
		{"translate", "--policies", bad},
		{"translate", "--policies", bad, "--workload", "nope"},
		{"translate", "--policies", bad, "--workload", "a/b", "--format", "xml"},
		{"check", "--policies", bad, "--workload", "a/b", "--source-ip", "nope"},
		{"check", "--policies", bad, "--workload", "a/b", "--header", "novalue"},
		{"mtls", "--policies", bad, "--workload", "a/b", "--listener"},
		{"frobnicate"},
		{},
	}
	for _, args := range usage {
		if code, _, _ := runAuthzCLI(t, args...); code != cliflag.ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, cliflag.ExitUsage)
		}
	}
	if code, _, _ := runAuthzCLI(t, "translate", "--policies", "/does/not/exist", "--workload", "a/b"); code != 1 {
		t.Errorf("missing path: exit %d, want 1", code)
	}
	if code, _, _ := runAuthzCLI(t, "check", "-h"); code != 0 {
		t.Errorf("-h: exit %d", code)
	}
}

// TestAuthzCheckFailsClosed is the regression for a typo in the only ALLOW
// policy of a workload: the policy used to be dropped and the request
// allowed.
func TestAuthzCheckFailsClosed(t *testing.T) {
	dir := t.TempDir()
	write := func(name, field string) string {
		p := filepath.Join(dir, name)
		doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: foo}\n" +
			"spec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from:\n    - source: {" + field + ": [\"cluster.local/ns/bar/sa/client\"]}\n" +
			"---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec: {}\n"
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"check", "--workload", "foo/web", "--labels", "app=web", "--source-principal", "spiffe://cluster.local/ns/bar/sa/client"}
	code, out, errOut := runAuthzCLI(t, append(args, "--policies", write("good.yaml", "principals"))...)
	if code != 0 || !strings.HasPrefix(out, "ALLOW") {
		t.Fatalf("valid policy: exit %d, %s %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "notice:") || !strings.Contains(errOut, "RequestAuthentication is not enforced") {
		t.Errorf("RequestAuthentication not reported: %s", errOut)
	}
	code, out, errOut = runAuthzCLI(t, append(args, "--policies", write("typo.yaml", "principal"))...)
	if code != exitDenied || !strings.HasPrefix(out, "DENY") {
		t.Fatalf("policy with a typo: exit %d, %s %s", code, out, errOut)
	}
	for _, want := range []string{"typo.yaml: document 1", "spec.rules[0].from[0].source.principal", "fail-closed:", "ALLOW policy that matches nothing"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q: %s", want, errOut)
		}
	}
}

func TestAuthzServeFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, cliflag.ExitUsage, "--cert-dir"},
		{[]string{"--cert", "a.pem"}, cliflag.ExitUsage, "--cert-dir"},
		{[]string{"--cert-dir", dir, "--max-streams", "0"}, cliflag.ExitUsage, "--max-streams"},
		{[]string{"--cert-dir", dir}, 1, "cert-chain.pem"},
	} {
		code, _, errOut := runAuthzCLI(t, append([]string{"serve"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("serve %v: exit %d, %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}
