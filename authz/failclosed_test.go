package authz_test

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
)

// engineAllowingProblems loads yaml, invalid documents included, into a new
// engine and returns the number of invalid resources applied.
func engineAllowingProblems(t *testing.T, yaml string) (*authz.Engine, int) {
	t.Helper()
	rs, _ := policy.Decode([]byte(yaml), "test.yaml")
	e := newEngine(t, authz.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	invalid := 0
	for _, r := range rs {
		if r.Invalid != nil {
			invalid++
		}
		if _, err := e.Apply(r); err != nil && r.Invalid == nil && !strings.Contains(err.Error(), "CUSTOM") {
			t.Fatalf("applying %s: %v", r.Key(), err)
		}
	}
	return e, invalid
}

// failClosedCases pair a valid policy set with a broken variant of it. The
// valid one must decide as its checks say; the broken one must be reported
// and decide as brokenChecks say, which are never more permissive.
var failClosedCases = []struct {
	name         string
	valid        string
	broken       string
	checks       []check
	brokenChecks []check
}{{
	// The regression: one typo in the only ALLOW policy of a workload
	// used to drop the policy, and with it every restriction.
	name: "typo in the only ALLOW policy",
	valid: ap("foo", "p", `
selector: {matchLabels: {app: web}}
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/client"]}`),
	broken: ap("foo", "p", `
selector: {matchLabels: {app: web}}
rules:
- from:
  - source: {principal: ["cluster.local/ns/bar/sa/client"]}`),
	checks: []check{
		allow(req{principal: spiffe("bar", "client")}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "other")}, ""),
	},
	brokenChecks: []check{
		deny(req{principal: spiffe("bar", "client")}, ""),
		deny(req{principal: spiffe("bar", "other")}, ""),
		deny(req{}, ""),
	},
}, {
	name: "bad value in an ALLOW policy next to a valid one",
	valid: docs(ap("foo", "p", `
rules:
- from:
  - source: {ipBlocks: ["10.1.0.0/16"]}`), ap("foo", "q", `
rules:
- to:
  - operation: {paths: ["/public"]}`)),
	broken: docs(ap("foo", "p", `
rules:
- from:
  - source: {ipBlocks: ["10.1.0.0/33"]}`), ap("foo", "q", `
rules:
- to:
  - operation: {paths: ["/public"]}`)),
	checks: []check{
		allow(req{}, rn("p", 0)),
		allow(req{ip: "10.9.9.9", path: "/public"}, rn("q", 0)),
		deny(req{ip: "10.9.9.9"}, ""),
	},
	brokenChecks: []check{
		deny(req{}, ""),
		allow(req{ip: "10.9.9.9", path: "/public"}, rn("q", 0)),
		deny(req{ip: "10.9.9.9"}, ""),
	},
}, {
	name: "unknown field in a DENY policy denies everything it selects",
	valid: ap("foo", "p", `
action: DENY
selector: {matchLabels: {app: web}}
rules:
- to:
  - operation: {paths: ["/admin"]}`),
	broken: ap("foo", "p", `
action: DENY
selector: {matchLabels: {app: web}}
rules:
- to:
  - operation: {pathz: ["/admin"]}`),
	checks: []check{
		deny(req{path: "/admin"}, rn("p", 0)),
		allow(req{path: "/"}, ""),
	},
	brokenChecks: []check{
		deny(req{path: "/admin"}, rn("p", 0)),
		deny(req{path: "/"}, rn("p", 0)),
	},
}, {
	name: "DENY with an unreadable selector denies the whole namespace",
	valid: ap("foo", "p", `
action: DENY
selector: {matchLabels: {app: other}}
rules:
- {}`),
	broken: ap("foo", "p", `
action: DENY
selector: {matchLabels: ["app", "other"]}
rules:
- {}`),
	checks:       []check{allow(req{}, "")},
	brokenChecks: []check{deny(req{}, rn("p", 0))},
}, {
	name: "DENY selecting another workload still selects only it",
	valid: ap("foo", "p", `
action: DENY
selector: {matchLabels: {app: other}}
rules:
- to:
  - operation: {paths: ["/admin"]}`),
	broken: ap("foo", "p", `
action: DENY
selector: {matchLabels: {app: other}}
rules:
- to:
  - operation: {paths: ["/a*b"]}`),
	checks:       []check{allow(req{path: "/admin"}, "")},
	brokenChecks: []check{allow(req{path: "/admin"}, "")},
}, {
	name: "unreadable action is taken as DENY",
	valid: ap("foo", "p", `
action: ALLOW
rules:
- {}`),
	broken: ap("foo", "p", `
action: ALOW
rules:
- {}`),
	checks:       []check{allow(req{}, rn("p", 0))},
	brokenChecks: []check{deny(req{}, rn("p", 0))},
}, {
	name: "invalid AUDIT audits everything and decides nothing",
	valid: docs(ap("foo", "p", `
action: AUDIT
rules:
- to:
  - operation: {paths: ["/x"]}`), ap("foo", "a", `
rules:
- {}`)),
	broken: docs(ap("foo", "p", `
action: AUDIT
rules:
- to:
  - operation: {ports: ["http"]}`), ap("foo", "a", `
rules:
- {}`)),
	checks:       []check{allow(req{}, rn("a", 0))},
	brokenChecks: []check{allow(req{}, rn("a", 0))},
}}

func TestFailClosed(t *testing.T) {
	ev := envoyrbac.New()
	for _, tc := range failClosedCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []struct {
				yaml   string
				checks []check
				broken bool
			}{{tc.valid, tc.checks, false}, {tc.broken, tc.brokenChecks, true}} {
				e, invalid := engineAllowingProblems(t, v.yaml)
				if v.broken != (invalid > 0) || v.broken != (len(e.Problems()) > 0) {
					t.Fatalf("broken=%v: %d invalid resources, problems %v", v.broken, invalid, e.Problems())
				}
				cfg, err := e.Compute(defaultWorkload)
				if err != nil {
					t.Fatal(err)
				}
				validate(t, cfg)
				for i, c := range v.checks {
					for _, tcp := range []bool{false, true} {
						r := c.r.build(t)
						var d envoyrbac.Decision
						if tcp {
							d, err = ev.EvaluateNetwork(cfg.NetworkFilters, r)
						} else {
							d, err = ev.EvaluateHTTP(cfg.HTTPFilters, r)
						}
						if err != nil {
							t.Fatal(err)
						}
						// Over TCP, HTTP-only ALLOW rules are left out, so
						// only denials must agree there.
						if tcp && c.allow {
							continue
						}
						if d.Allowed != c.allow || (!tcp && d.Policy != c.by) {
							t.Errorf("broken=%v tcp=%v check %d (%+v): got allowed=%v by %q (%s), want allowed=%v by %q",
								v.broken, tcp, i, c.r, d.Allowed, d.Policy, d.Reason, c.allow, c.by)
						}
					}
				}
			}
		})
	}
}

func TestFailClosedReportsWhere(t *testing.T) {
	in := ap("foo", "p", `
rules:
- from:
  - source: {principal: ["x"]}`)
	rs, err := policy.Decode([]byte(in), "policies/web.yaml")
	if len(rs) != 1 || rs[0].Invalid == nil {
		t.Fatalf("resources %v", rs)
	}
	msg := err.Error()
	for _, want := range []string{"policies/web.yaml", "document 1", "AuthorizationPolicy foo/p", "spec.rules[0].from[0].source.principal"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if note := rs[0].FailClosedNote(); !strings.Contains(note, "ALLOW policy that matches nothing") {
		t.Errorf("note %q", note)
	}
}

func TestFailClosedPeerAuthentication(t *testing.T) {
	pa := func(spec string) string { return pol("PeerAuthentication", "foo", "pa", "", spec) }
	tests := []struct {
		name string
		yaml string
		want mtls.Mode
		port map[uint32]mtls.Mode
	}{
		{"readable mode kept", pa("mtls: {mode: PERMISSIVE}\nextra: 1"), mtls.Permissive, nil},
		{"unknown mode becomes STRICT", pa("mtls: {mode: STRICTER}"), mtls.Strict, nil},
		{"mode of the wrong type becomes STRICT", pa("mtls: {mode: [STRICT]}"), mtls.Strict, nil},
		{"unreadable selector becomes STRICT for the namespace", pa("selector: {matchLabels: {\"a b\": c}}\nmtls: {mode: DISABLE}"), mtls.Strict, nil},
		{"bad port keeps the others", pa("selector: {matchLabels: {app: web}}\nmtls: {mode: STRICT}\nportLevelMtls:\n  70000: {mode: DISABLE}\n  8080: {mode: PERMISSIVE}"), mtls.Strict, map[uint32]mtls.Mode{8080: mtls.Permissive}},
		{"port-level without selector becomes STRICT", pa("mtls: {mode: DISABLE}\nportLevelMtls:\n  8080: {mode: DISABLE}"), mtls.Strict, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, invalid := engineAllowingProblems(t, tt.yaml)
			if invalid != 1 || len(e.Problems()) != 1 {
				t.Fatalf("invalid %d problems %v", invalid, e.Problems())
			}
			cfg, err := e.Compute(defaultWorkload)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MTLS.Workload.Mode != tt.want {
				t.Errorf("mode %s, want %s", cfg.MTLS.Workload.Mode, tt.want)
			}
			for p, m := range tt.port {
				if got := cfg.MTLS.Mode(p); got != m {
					t.Errorf("port %d: %s, want %s", p, got, m)
				}
			}
		})
	}
}

// Istio's principal matching, for any principal string: finding 8 of the
// hostile-load review (serviceAccounts and namespaces with extra segments)
// and other trust domains.
var principalCases = []agreeCase{
	{name: "DENY serviceAccounts matches extra path segments", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {serviceAccounts: ["bar/web"]}`), checks: []check{
		deny(req{principal: "spiffe://cluster.local/ns/bar/sa/web"}, rn("p", 0)),
		deny(req{principal: "spiffe://cluster.local/ns/bar/sa/web/extra"}, rn("p", 0)),
		deny(req{principal: "spiffe://other.td/ns/bar/sa/web"}, rn("p", 0)),
		deny(req{principal: "spiffe://cluster.local/ns/bar/x/y/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/bar/sa/web-x"}, ""),
		allow(req{principal: "spiffe://cluster.local/ns/bar/sa/webx/extra"}, ""),
		allow(req{principal: "spiffe://cluster.local/ns/baz/sa/web"}, ""),
	}},
	{name: "DENY serviceAccounts in the policy namespace", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {serviceAccounts: ["web"]}`), checks: []check{
		deny(req{principal: "spiffe://cluster.local/ns/foo/sa/web/extra"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/bar/sa/web"}, ""),
	}},
	{name: "DENY namespaces matches extra path segments anywhere", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {namespaces: ["bar"]}`), checks: []check{
		deny(req{principal: "spiffe://cluster.local/ns/bar/sa/web"}, rn("p", 0)),
		deny(req{principal: "spiffe://cluster.local/ns/bar/sa/web/extra"}, rn("p", 0)),
		deny(req{principal: "spiffe://federated.td/region/eu/ns/bar/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/barx/sa/web"}, ""),
		allow(req{principal: "spiffe://cluster.local/ns/bar"}, ""),
	}},
	{name: "namespaces wildcard crosses segments as in Istio", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {namespaces: ["team-*"]}`), checks: []check{
		deny(req{principal: "spiffe://cluster.local/ns/team-a/sa/web"}, rn("p", 0)),
		deny(req{principal: "spiffe://cluster.local/ns/team-a/x/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/other/sa/web"}, ""),
	}},
	{name: "principal in another trust domain is matched as written", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {principals: ["partner.example/ns/bar/sa/web"]}`), checks: []check{
		deny(req{principal: "spiffe://partner.example/ns/bar/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/bar/sa/web"}, ""),
		allow(req{principal: "spiffe://partner.example/ns/bar/sa/web/extra"}, ""),
	}},
	{name: "cluster.local stands for the local trust domain", cfg: authz.Config{TrustDomain: "example.org"}, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/web"]}`), checks: []check{
		deny(req{principal: "spiffe://example.org/ns/bar/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://cluster.local/ns/bar/sa/web"}, ""),
	}},
	{name: "principal suffix wildcard", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {principals: ["*/sa/web"]}`), checks: []check{
		deny(req{principal: "spiffe://any.td/ns/x/sa/web"}, rn("p", 0)),
		allow(req{principal: "spiffe://any.td/ns/x/sa/web/extra"}, ""),
	}},
	{name: "principal with extra segments is not alias-expanded", cfg: authz.Config{TrustDomain: "new.td", TrustDomainAliases: []string{"old.td"}}, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {principals: ["new.td/ns/bar/sa/web/extra"]}`), checks: []check{
		deny(req{principal: "spiffe://new.td/ns/bar/sa/web/extra"}, rn("p", 0)),
		allow(req{principal: "spiffe://old.td/ns/bar/sa/web/extra"}, ""),
	}},
	// Condition keys from Istio's reference: experimental.envoy.filters.*.
	{name: "experimental filter metadata string", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: experimental.envoy.filters.network.mysql_proxy[db.table]
    values: ["secrets"]`), checks: []check{
		deny(req{filterMD: map[string]map[string]any{"envoy.filters.network.mysql_proxy": {"db.table": "secrets"}}}, rn("p", 0)),
		allow(req{filterMD: map[string]map[string]any{"envoy.filters.network.mysql_proxy": {"db.table": "public"}}}, ""),
		allow(req{}, ""),
	}},
	{name: "experimental filter metadata list", yaml: ap("foo", "p", `
rules:
- when:
  - key: experimental.envoy.filters.network.mysql_proxy[db.table]
    values: ["[upd*]"]`), checks: []check{
		allow(req{filterMD: map[string]map[string]any{"envoy.filters.network.mysql_proxy": {"db.table": []any{"select", "update"}}}}, rn("p", 0)),
		deny(req{filterMD: map[string]map[string]any{"envoy.filters.network.mysql_proxy": {"db.table": []any{"select"}}}}, ""),
	}},
}

func TestPrincipalMatchingAsIstio(t *testing.T) {
	ev := envoyrbac.New()
	for _, tc := range principalCases {
		t.Run(tc.name, func(t *testing.T) {
			e := engineFor(t, tc.yaml, tc.cfg)
			cfg, err := e.Compute(defaultWorkload)
			if err != nil {
				t.Fatal(err)
			}
			validate(t, cfg)
			for i, c := range tc.checks {
				var d envoyrbac.Decision
				if tc.tcp {
					d, err = ev.EvaluateNetwork(cfg.NetworkFilters, c.r.build(t))
				} else {
					d, err = ev.EvaluateHTTP(cfg.HTTPFilters, c.r.build(t))
				}
				if err != nil {
					t.Fatal(err)
				}
				if d.Allowed != c.allow || d.Policy != c.by {
					t.Errorf("check %d (%s): got allowed=%v by %q, want allowed=%v by %q", i, c.r.principal, d.Allowed, d.Policy, c.allow, c.by)
				}
			}
		})
	}
}
