package authz_test

import (
	"testing"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// check is one request and the decision the policies intend for it.
type check struct {
	r     req
	allow bool
	// by is the policy rule that must decide, as Envoy names it; empty
	// means no rule decides (denied for want of an ALLOW match, or allowed
	// for want of any ALLOW policy).
	by string
}

func allow(r req, by string) check { return check{r: r, allow: true, by: by} }
func deny(r req, by string) check  { return check{r: r, allow: false, by: by} }

func rn(name string, i int) string { return rbac.RuleName("foo", name, i) }

type agreeCase struct {
	name     string
	yaml     string
	workload *policy.Workload
	cfg      authz.Config
	tcp      bool // evaluate the network (TCP) filters instead of HTTP
	checks   []check
}

// agreementCases covers every AuthorizationPolicy field, positive and
// negated, on HTTP and TCP, with the decision each request must get. The
// decision is checked against the evaluation of the generated Envoy RBAC.
var agreementCases = []agreeCase{
	// --- Sources: principals.
	{name: "principals exact", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/client"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "client")}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "other")}, ""),
		deny(req{principal: spiffe("bar", "client-x")}, ""),
		deny(req{}, ""), // plaintext has no principal
	}},
	{name: "principals exact tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/client"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "client")}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "other")}, ""),
	}},
	{name: "principals prefix", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/*"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "a")}, rn("p", 0)),
		deny(req{principal: spiffe("baz", "a")}, ""),
	}},
	{name: "principals suffix", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["*/sa/admin"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "admin")}, rn("p", 0)),
		allow(req{principal: "spiffe://other.td/ns/x/sa/admin"}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "admin2")}, ""),
	}},
	{name: "principals presence", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["*"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "a")}, rn("p", 0)),
		deny(req{}, ""),
	}},
	{name: "notPrincipals", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notPrincipals: ["cluster.local/ns/bar/sa/good"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "good")}, ""),
		deny(req{principal: spiffe("bar", "bad")}, rn("p", 0)),
		deny(req{}, rn("p", 0)),
	}},
	{name: "notPrincipals tcp", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notPrincipals: ["cluster.local/ns/bar/sa/good"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "good")}, ""),
		deny(req{principal: spiffe("bar", "bad")}, rn("p", 0)),
	}},
	{name: "principal from DNS SAN is not a SPIFFE principal", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/client"]}`), checks: []check{
		deny(req{dns: "client.bar.svc"}, ""),
	}},

	// --- Trust domain aliases.
	{name: "trust domain alias: local principal matches alias peer", cfg: authz.Config{TrustDomain: "new.td", TrustDomainAliases: []string{"old.td"}},
		yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["new.td/ns/bar/sa/client"]}`), checks: []check{
			allow(req{principal: "spiffe://new.td/ns/bar/sa/client"}, rn("p", 0)),
			allow(req{principal: "spiffe://old.td/ns/bar/sa/client"}, rn("p", 0)),
			deny(req{principal: "spiffe://evil.td/ns/bar/sa/client"}, ""),
		}},
	{name: "trust domain alias: alias principal matches local peer", cfg: authz.Config{TrustDomain: "new.td", TrustDomainAliases: []string{"old.td"}},
		yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: source.principal
    values: ["old.td/ns/bar/sa/client"]`), checks: []check{
			deny(req{principal: "spiffe://new.td/ns/bar/sa/client"}, rn("p", 0)),
			deny(req{principal: "spiffe://old.td/ns/bar/sa/client"}, rn("p", 0)),
			allow(req{principal: "spiffe://other.td/ns/bar/sa/client"}, ""),
		}},
	{name: "no aliases: other trust domain does not match", yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["cluster.local/ns/bar/sa/client"]}`), checks: []check{
		deny(req{principal: "spiffe://old.td/ns/bar/sa/client"}, ""),
	}},

	// --- requestPrincipals.
	{name: "requestPrincipals exact", yaml: ap("foo", "p", `
rules:
- from:
  - source: {requestPrincipals: ["https://issuer.example/alice"]}`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Principal: "https://issuer.example/alice"}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Principal: "https://issuer.example/bob"}}, ""),
		deny(req{}, ""),
	}},
	{name: "requestPrincipals presence", yaml: ap("foo", "p", `
rules:
- from:
  - source: {requestPrincipals: ["*"]}`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Principal: "iss/sub"}}, rn("p", 0)),
		deny(req{}, ""),
	}},
	{name: "requestPrincipals wildcards", yaml: ap("foo", "p", `
rules:
- from:
  - source: {requestPrincipals: ["https://a.example/*", "*/robot", "*.b.example/ci", "https://c.example/team-*"]}`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Principal: "https://a.example/anyone"}}, rn("p", 0)),
		allow(req{auth: rbac.RequestAuth{Principal: "https://z.example/robot"}}, rn("p", 0)),
		allow(req{auth: rbac.RequestAuth{Principal: "https://x.b.example/ci"}}, rn("p", 0)),
		allow(req{auth: rbac.RequestAuth{Principal: "https://c.example/team-blue"}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Principal: "https://c.example/other"}}, ""),
		deny(req{auth: rbac.RequestAuth{Principal: "https://x.b.example/cd"}}, ""),
		deny(req{auth: rbac.RequestAuth{Principal: "https://a.example.evil/anyone"}}, ""),
	}},
	{name: "requestPrincipals issuer with slashes", yaml: ap("foo", "p", `
rules:
- from:
  - source: {requestPrincipals: ["https://issuer.example/realms/x/alice"]}`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Principal: "https://issuer.example/realms/x/alice"}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Principal: "https://issuer.example/realms/x/bob"}}, ""),
	}},
	{name: "claims as a string or a list", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.claims[role]
    values: ["admin"]
  - key: request.auth.audiences
    values: ["api"]`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Audiences: []string{"api"}, Claims: map[string]any{"role": "admin"}}}, rn("p", 0)),
		allow(req{auth: rbac.RequestAuth{Audiences: []string{"web", "api"}, Claims: map[string]any{"role": []string{"user", "admin"}}}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Audiences: []string{"web"}, Claims: map[string]any{"role": "admin"}}}, ""),
	}},
	{name: "notRequestPrincipals", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notRequestPrincipals: ["*"]}`), checks: []check{
		deny(req{}, rn("p", 0)),
		allow(req{auth: rbac.RequestAuth{Principal: "iss/sub"}}, ""),
	}},
	{name: "requestPrincipals tcp allow is dropped", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {requestPrincipals: ["*"]}`), checks: []check{
		deny(req{auth: rbac.RequestAuth{Principal: "iss/sub"}}, ""),
	}},
	{name: "requestPrincipals tcp deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notRequestPrincipals: ["*"]}`), checks: []check{
		deny(req{auth: rbac.RequestAuth{Principal: "iss/sub"}}, rn("p", 0)),
	}},

	// --- namespaces.
	{name: "namespaces exact", yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["bar"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "any")}, rn("p", 0)),
		allow(req{principal: "spiffe://other.td/ns/bar/sa/any"}, rn("p", 0)),
		deny(req{principal: spiffe("barx", "any")}, ""),
		deny(req{principal: spiffe("xbar", "any")}, ""),
		deny(req{}, ""),
	}},
	{name: "namespaces regex metacharacters are literal", yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["a.b"]}`), checks: []check{
		allow(req{principal: spiffe("a.b", "x")}, rn("p", 0)),
		deny(req{principal: spiffe("aXb", "x")}, ""),
	}},
	{name: "namespaces prefix and suffix", yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["team-*", "*-prod"]}`), checks: []check{
		allow(req{principal: spiffe("team-a", "x")}, rn("p", 0)),
		allow(req{principal: spiffe("web-prod", "x")}, rn("p", 0)),
		deny(req{principal: spiffe("web-dev", "x")}, ""),
		// A wildcard never crosses into the service-account segment.
		deny(req{principal: "spiffe://cluster.local/ns/other/sa/team-a"}, ""),
	}},
	{name: "notNamespaces", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notNamespaces: ["foo"]}`), checks: []check{
		allow(req{principal: spiffe("foo", "x")}, ""),
		deny(req{principal: spiffe("bar", "x")}, rn("p", 0)),
		deny(req{}, rn("p", 0)),
	}},
	{name: "namespaces tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["bar"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "x")}, rn("p", 0)),
		deny(req{principal: spiffe("baz", "x")}, ""),
	}},

	// --- serviceAccounts and trustDomains.
	{name: "serviceAccounts", yaml: ap("foo", "p", `
rules:
- from:
  - source: {serviceAccounts: ["bar/client", "local"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "client")}, rn("p", 0)),
		allow(req{principal: spiffe("foo", "local")}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "local")}, ""),
		deny(req{principal: spiffe("bar", "client2")}, ""),
	}},
	{name: "notServiceAccounts", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notServiceAccounts: ["bar/client"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "client")}, ""),
		deny(req{principal: spiffe("bar", "other")}, rn("p", 0)),
	}},
	{name: "trustDomains and notTrustDomains", yaml: ap("foo", "p", `
rules:
- from:
  - source: {trustDomains: ["*.example.org"], notTrustDomains: ["bad.example.org"]}`), checks: []check{
		allow(req{principal: "spiffe://a.example.org/ns/x/sa/y"}, rn("p", 0)),
		deny(req{principal: "spiffe://bad.example.org/ns/x/sa/y"}, ""),
		deny(req{principal: spiffe("x", "y")}, ""),
	}},

	// --- ipBlocks and remoteIpBlocks.
	{name: "ipBlocks", yaml: ap("foo", "p", `
rules:
- from:
  - source: {ipBlocks: ["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"]}`), checks: []check{
		allow(req{ip: "10.1.200.3"}, rn("p", 0)),
		allow(req{ip: "192.0.2.7"}, rn("p", 0)),
		allow(req{ip: "2001:db8::5"}, rn("p", 0)),
		deny(req{ip: "192.0.2.8"}, ""),
		deny(req{ip: "10.2.0.1"}, ""),
		// The original client address (remote) does not count for ipBlocks.
		deny(req{ip: "10.9.9.9", remoteIP: "10.1.0.1"}, ""),
	}},
	{name: "notIpBlocks", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notIpBlocks: ["10.0.0.0/8"]}`), checks: []check{
		allow(req{ip: "10.3.3.3"}, ""),
		deny(req{ip: "172.16.0.1"}, rn("p", 0)),
	}},
	{name: "ipBlocks tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {ipBlocks: ["10.1.0.0/16"]}`), checks: []check{
		allow(req{ip: "10.1.0.9"}, rn("p", 0)),
		deny(req{ip: "10.2.0.9"}, ""),
	}},
	{name: "remoteIpBlocks", yaml: ap("foo", "p", `
rules:
- from:
  - source: {remoteIpBlocks: ["203.0.113.0/24"]}`), checks: []check{
		allow(req{ip: "10.0.0.1", remoteIP: "203.0.113.9"}, rn("p", 0)),
		deny(req{ip: "203.0.113.9", remoteIP: "198.51.100.1"}, ""),
		allow(req{ip: "203.0.113.9"}, rn("p", 0)), // no forwarded address: remote is direct
	}},
	{name: "notRemoteIpBlocks", yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notRemoteIpBlocks: ["203.0.113.0/24"]}`), checks: []check{
		allow(req{remoteIP: "203.0.113.1"}, ""),
		deny(req{remoteIP: "198.51.100.1"}, rn("p", 0)),
	}},

	// --- Operations: hosts.
	{name: "hosts exact is case-insensitive", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {hosts: ["web.example.com"]}`), checks: []check{
		allow(req{host: "web.example.com"}, rn("p", 0)),
		allow(req{host: "WEB.Example.COM"}, rn("p", 0)),
		deny(req{host: "web.example.com:8080"}, ""),
		deny(req{host: "api.example.com"}, ""),
	}},
	{name: "hosts prefix suffix presence", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {hosts: ["*.example.com", "web.internal:*"]}`), checks: []check{
		allow(req{host: "a.EXAMPLE.com"}, rn("p", 0)),
		allow(req{host: "web.internal:8443"}, rn("p", 0)),
		deny(req{host: "example.org"}, ""),
	}},
	{name: "notHosts", yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notHosts: ["*.example.com"]}`), checks: []check{
		allow(req{host: "x.example.com"}, ""),
		deny(req{host: "x.example.org"}, rn("p", 0)),
	}},
	{name: "hosts tcp allow is dropped", tcp: true, yaml: ap("foo", "p", `
rules:
- to:
  - operation: {hosts: ["*"]}`), checks: []check{
		deny(req{}, ""),
	}},

	// --- ports.
	{name: "ports", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {ports: ["8080", "9090"]}`), checks: []check{
		allow(req{port: 8080}, rn("p", 0)),
		allow(req{port: 9090}, rn("p", 0)),
		deny(req{port: 8081}, ""),
	}},
	{name: "notPorts tcp", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notPorts: ["8080"]}`), checks: []check{
		allow(req{port: 8080}, ""),
		deny(req{port: 3306}, rn("p", 0)),
	}},
	{name: "ports tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- to:
  - operation: {ports: ["5432"]}`), checks: []check{
		allow(req{port: 5432}, rn("p", 0)),
		deny(req{port: 5433}, ""),
	}},

	// --- methods.
	{name: "methods", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {methods: ["GET", "HEAD"]}`), checks: []check{
		allow(req{method: "GET"}, rn("p", 0)),
		allow(req{method: "HEAD"}, rn("p", 0)),
		deny(req{method: "POST"}, ""),
		deny(req{method: "get"}, ""), // methods are case-sensitive
	}},
	{name: "notMethods", yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notMethods: ["GET"]}`), checks: []check{
		allow(req{method: "GET"}, ""),
		deny(req{method: "DELETE"}, rn("p", 0)),
	}},
	{name: "methods tcp deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {methods: ["DELETE"]}`), checks: []check{
		deny(req{}, rn("p", 0)),
	}},
	{name: "methods and ports tcp deny keeps the port", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {methods: ["DELETE"], ports: ["9000"]}`), checks: []check{
		deny(req{port: 9000}, rn("p", 0)),
		allow(req{port: 8080}, ""),
	}},

	// --- paths.
	{name: "paths exact prefix suffix presence", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/exact", "/api/*", "*.png"]}`), checks: []check{
		allow(req{path: "/exact"}, rn("p", 0)),
		allow(req{path: "/exact?x=1"}, rn("p", 0)),
		deny(req{path: "/exact/"}, ""),
		allow(req{path: "/api/v1/users"}, rn("p", 0)),
		allow(req{path: "/img/a.png"}, rn("p", 0)),
		deny(req{path: "/img/a.png.txt"}, ""),
		deny(req{path: "/other"}, ""),
	}},
	{name: "paths presence", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["*"]}`), checks: []check{
		allow(req{path: "/anything"}, rn("p", 0)),
	}},
	{name: "notPaths", yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notPaths: ["/public/*"]}`), checks: []check{
		allow(req{path: "/public/index.html"}, ""),
		deny(req{path: "/private"}, rn("p", 0)),
	}},
	{name: "path template {*}", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/api/{*}/info"]}`), checks: []check{
		allow(req{path: "/api/v1/info"}, rn("p", 0)),
		allow(req{path: "/api/v1/info?verbose=1"}, rn("p", 0)),
		deny(req{path: "/api/v1/v2/info"}, ""),
		deny(req{path: "/api//info"}, ""),
	}},
	{name: "path template {**}", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/files/{**}"]}`), checks: []check{
		allow(req{path: "/files/a"}, rn("p", 0)),
		allow(req{path: "/files/a/b/c.txt"}, rn("p", 0)),
		allow(req{path: "/files/"}, rn("p", 0)),
		deny(req{path: "/files"}, ""),
		deny(req{path: "/other/a"}, ""),
	}},
	{name: "path template mixed", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/foo/{*}/bar/{**}"]}`), checks: []check{
		allow(req{path: "/foo/buzz/bar/"}, rn("p", 0)),
		allow(req{path: "/foo/buzz/bar/baz"}, rn("p", 0)),
		deny(req{path: "/foo/a/b/bar/baz"}, ""),
	}},
	{name: "notPaths template", yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notPaths: ["/healthz/{*}"]}`), checks: []check{
		allow(req{path: "/healthz/ready"}, ""),
		deny(req{path: "/admin"}, rn("p", 0)),
	}},
	{name: "paths tcp allow is dropped, other rule kept", tcp: true, yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/a"]}
- to:
  - operation: {ports: ["6379"]}`), checks: []check{
		allow(req{port: 6379}, rn("p", 1)),
		deny(req{port: 8080}, ""),
	}},

	// --- Conditions.
	{name: "when request.headers", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.headers[X-Tenant]
    values: ["acme", "corp-*"]
    notValues: ["corp-evil"]`), checks: []check{
		allow(req{headers: map[string]string{"x-tenant": "acme"}}, rn("p", 0)),
		allow(req{headers: map[string]string{"X-Tenant": "corp-1"}}, rn("p", 0)),
		deny(req{headers: map[string]string{"x-tenant": "corp-evil"}}, ""),
		deny(req{headers: map[string]string{"x-tenant": "other"}}, ""),
		deny(req{}, ""),
	}},
	{name: "when request.headers presence and notValues", yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: request.headers[x-debug]
    values: ["*"]`), checks: []check{
		deny(req{headers: map[string]string{"x-debug": "1"}}, rn("p", 0)),
		allow(req{}, ""),
	}},
	{name: "when request.headers tcp deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: request.headers[x-debug]
    values: ["1"]`), checks: []check{
		deny(req{}, rn("p", 0)),
	}},
	{name: "when source.ip and notValues", yaml: ap("foo", "p", `
rules:
- when:
  - key: source.ip
    values: ["10.0.0.0/8"]
    notValues: ["10.66.0.0/16"]`), checks: []check{
		allow(req{ip: "10.1.1.1"}, rn("p", 0)),
		deny(req{ip: "10.66.1.1"}, ""),
		deny(req{ip: "192.168.1.1"}, ""),
	}},
	{name: "when remote.ip", yaml: ap("foo", "p", `
rules:
- when:
  - key: remote.ip
    values: ["203.0.113.0/24"]`), checks: []check{
		allow(req{remoteIP: "203.0.113.5"}, rn("p", 0)),
		deny(req{remoteIP: "198.51.100.5"}, ""),
	}},
	{name: "when source.namespace", yaml: ap("foo", "p", `
rules:
- when:
  - key: source.namespace
    values: ["bar"]
    notValues: ["baz"]`), checks: []check{
		allow(req{principal: spiffe("bar", "x")}, rn("p", 0)),
		deny(req{principal: spiffe("baz", "x")}, ""),
	}},
	{name: "when source.principal tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: source.principal
    values: ["cluster.local/ns/bar/sa/a"]`), checks: []check{
		allow(req{principal: spiffe("bar", "a")}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "b")}, ""),
	}},
	{name: "when source.principal notValues", yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: source.principal
    notValues: ["cluster.local/ns/bar/sa/a"]`), checks: []check{
		allow(req{principal: spiffe("bar", "a")}, ""),
		deny(req{principal: spiffe("bar", "b")}, rn("p", 0)),
	}},
	{name: "when request.auth.principal", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.principal
    values: ["iss/alice"]`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Principal: "iss/alice"}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Principal: "iss/bob"}}, ""),
	}},
	{name: "when request.auth.audiences", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.audiences
    values: ["api.example.com"]
    notValues: ["legacy"]`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Audiences: []string{"other", "api.example.com"}}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Audiences: []string{"api.example.com", "legacy"}}}, ""),
		deny(req{auth: rbac.RequestAuth{Audiences: []string{"other"}}}, ""),
	}},
	{name: "when request.auth.presenter", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.presenter
    values: ["frontend*"]`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Presenter: "frontend-app"}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Presenter: "cli"}}, ""),
	}},
	{name: "when request.auth.claims", yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.claims[groups]
    values: ["admin"]
  - key: request.auth.claims[realm][role]
    notValues: ["guest"]`), checks: []check{
		allow(req{auth: rbac.RequestAuth{Claims: map[string]any{"groups": []string{"dev", "admin"}, "realm": map[string]any{"role": "owner"}}}}, rn("p", 0)),
		deny(req{auth: rbac.RequestAuth{Claims: map[string]any{"groups": []string{"dev", "admin"}, "realm": map[string]any{"role": "guest"}}}}, ""),
		deny(req{auth: rbac.RequestAuth{Claims: map[string]any{"groups": "dev"}}}, ""),
	}},
	{name: "when request.auth tcp allow is dropped", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.claims[groups]
    values: ["admin"]`), checks: []check{
		deny(req{auth: rbac.RequestAuth{Claims: map[string]any{"groups": "admin"}}}, ""),
	}},
	{name: "when destination.ip", yaml: ap("foo", "p", `
rules:
- when:
  - key: destination.ip
    values: ["10.2.0.0/16"]
    notValues: ["10.2.9.9"]`), checks: []check{
		allow(req{destIP: "10.2.2.2"}, rn("p", 0)),
		deny(req{destIP: "10.2.9.9"}, ""),
		deny(req{destIP: "10.3.2.2"}, ""),
	}},
	{name: "when destination.port tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: destination.port
    values: ["8080"]`), checks: []check{
		allow(req{port: 8080}, rn("p", 0)),
		deny(req{port: 8443}, ""),
	}},
	{name: "when destination.port notValues", yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: destination.port
    notValues: ["8080"]`), checks: []check{
		allow(req{port: 8080}, ""),
		deny(req{port: 15000}, rn("p", 0)),
	}},
	{name: "when connection.sni", yaml: ap("foo", "p", `
rules:
- when:
  - key: connection.sni
    values: ["*.svc.cluster.local"]
    notValues: ["secret.svc.cluster.local"]`), checks: []check{
		allow(req{sni: "web.svc.cluster.local"}, rn("p", 0)),
		deny(req{sni: "secret.svc.cluster.local"}, ""),
		deny(req{}, ""),
	}},
	{name: "when connection.sni tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: connection.sni
    values: ["db.example"]`), checks: []check{
		allow(req{sni: "db.example"}, rn("p", 0)),
		deny(req{sni: "other"}, ""),
	}},

	// --- TCP: every TCP-capable field, positive and negated, and every
	// HTTP-only field dropped (ALLOW) or ignored (DENY).
	{name: "tcp notNamespaces", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {notNamespaces: ["foo"]}`), checks: []check{
		allow(req{principal: spiffe("foo", "x")}, ""),
		deny(req{principal: spiffe("bar", "x")}, rn("p", 0)),
	}},
	{name: "tcp serviceAccounts and notServiceAccounts", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {serviceAccounts: ["bar/client"]}
- from:
  - source: {notServiceAccounts: ["bar/client", "bar/evil"], ipBlocks: ["10.9.0.0/16"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "client")}, rn("p", 0)),
		allow(req{principal: spiffe("baz", "x"), ip: "10.9.1.1"}, rn("p", 1)),
		deny(req{principal: spiffe("bar", "evil"), ip: "10.9.1.1"}, ""),
	}},
	{name: "tcp trustDomains", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {trustDomains: ["cluster.local"], notTrustDomains: ["*.evil"]}`), checks: []check{
		allow(req{principal: spiffe("a", "b")}, rn("p", 0)),
		deny(req{principal: "spiffe://x.evil/ns/a/sa/b"}, ""),
	}},
	// Istio adds "spiffe://" to every principal, so one written with it
	// matches no peer: the ALLOW allows nothing by it, the DENY denies
	// nothing by it.
	{name: "tcp principal written with spiffe:// allows nothing", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["spiffe://cluster.local/ns/a/sa/b"]}`), checks: []check{
		deny(req{principal: spiffe("a", "b")}, ""),
	}},
	{name: "tcp principal written with spiffe:// denies nothing", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- from:
  - source: {principals: ["spiffe://cluster.local/ns/a/sa/b"]}`), checks: []check{
		allow(req{principal: spiffe("a", "b")}, ""),
	}},
	{name: "tcp notIpBlocks", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {notIpBlocks: ["10.66.0.0/16"]}`), checks: []check{
		allow(req{ip: "10.1.1.1"}, rn("p", 0)),
		deny(req{ip: "10.66.1.1"}, ""),
	}},
	{name: "tcp remoteIpBlocks and notRemoteIpBlocks", tcp: true, yaml: ap("foo", "p", `
rules:
- from:
  - source: {remoteIpBlocks: ["203.0.113.0/24"], notRemoteIpBlocks: ["203.0.113.66"]}`), checks: []check{
		allow(req{remoteIP: "203.0.113.5"}, rn("p", 0)),
		deny(req{remoteIP: "203.0.113.66"}, ""),
		deny(req{remoteIP: "198.51.100.1"}, ""),
	}},
	{name: "tcp notHosts deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notHosts: ["*.example.com"], ports: ["25"]}`), checks: []check{
		deny(req{port: 25}, rn("p", 0)),
		allow(req{port: 26}, ""),
	}},
	{name: "tcp notMethods allow is dropped", tcp: true, yaml: ap("foo", "p", `
rules:
- to:
  - operation: {notMethods: ["DELETE"]}`), checks: []check{
		deny(req{}, ""),
	}},
	{name: "tcp notPaths deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- to:
  - operation: {notPaths: ["/public/*"]}`), checks: []check{
		deny(req{}, rn("p", 0)),
	}},
	{name: "tcp audit with HTTP fields is broadened and never denies", tcp: true, yaml: ap("foo", "p", `
action: AUDIT
rules:
- to:
  - operation: {paths: ["/x"]}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "tcp when source.ip and remote.ip", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: source.ip
    values: ["10.0.0.0/8"]
  - key: remote.ip
    notValues: ["10.9.9.9"]`), checks: []check{
		allow(req{ip: "10.1.1.1"}, rn("p", 0)),
		deny(req{ip: "10.9.9.9"}, ""),
		deny(req{ip: "11.1.1.1"}, ""),
	}},
	{name: "tcp when source.namespace", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: source.namespace
    notValues: ["evil"]`), checks: []check{
		allow(req{principal: spiffe("good", "x")}, rn("p", 0)),
		deny(req{principal: spiffe("evil", "x")}, ""),
	}},
	{name: "tcp when destination.ip", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: destination.ip
    values: ["10.2.2.2"]`), checks: []check{
		deny(req{destIP: "10.2.2.2"}, rn("p", 0)),
		allow(req{destIP: "10.2.2.3"}, ""),
	}},
	{name: "tcp when connection.sni notValues", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: connection.sni
    notValues: ["*.internal"]`), checks: []check{
		allow(req{sni: "db.internal"}, ""),
		deny(req{sni: "db.example"}, rn("p", 0)),
	}},
	{name: "tcp when request.auth.audiences and presenter allow is dropped", tcp: true, yaml: ap("foo", "p", `
rules:
- when:
  - key: request.auth.audiences
    values: ["a"]
- when:
  - key: request.auth.presenter
    values: ["b"]
- to:
  - operation: {ports: ["8080"]}`), checks: []check{
		allow(req{port: 8080}, rn("p", 2)),
		deny(req{port: 9090}, ""),
	}},
	{name: "tcp when request.auth.principal deny is broadened", tcp: true, yaml: ap("foo", "p", `
action: DENY
rules:
- when:
  - key: request.auth.principal
    notValues: ["*"]
  - key: destination.port
    values: ["9090"]`), checks: []check{
		deny(req{port: 9090}, rn("p", 0)),
		allow(req{port: 8080}, ""),
	}},
	{name: "tcp trust domain alias", tcp: true, cfg: authz.Config{TrustDomain: "new.td", TrustDomainAliases: []string{"old.td"}},
		yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["new.td/ns/bar/sa/*"]}`), checks: []check{
			allow(req{principal: "spiffe://old.td/ns/bar/sa/x"}, rn("p", 0)),
			allow(req{principal: "spiffe://new.td/ns/bar/sa/x"}, rn("p", 0)),
			deny(req{principal: "spiffe://other.td/ns/bar/sa/x"}, ""),
		}},
	// Istio expands aliases only for principals of exactly the form
	// <td>/ns/<ns>/sa/<sa>: a shorter wildcard stays in its trust domain.
	{name: "tcp trust domain alias not expanded for other forms", tcp: true, cfg: authz.Config{TrustDomain: "new.td", TrustDomainAliases: []string{"old.td"}},
		yaml: ap("foo", "p", `
rules:
- from:
  - source: {principals: ["new.td/ns/bar/*"]}`), checks: []check{
			allow(req{principal: "spiffe://new.td/ns/bar/sa/x"}, rn("p", 0)),
			deny(req{principal: "spiffe://old.td/ns/bar/sa/x"}, ""),
		}},
	{name: "tcp dry-run", tcp: true, yaml: pol("AuthorizationPolicy", "foo", "p", "  annotations: {istio.io/dry-run: \"true\"}", `
action: DENY
rules:
- {}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "tcp custom is enforced as deny", tcp: true, yaml: ap("foo", "p", `
action: CUSTOM
provider: {name: ext}
rules:
- to:
  - operation: {paths: ["/admin"]}`), checks: []check{
		deny(req{}, rn("p", 0)),
	}},

	// --- Combination semantics.
	{name: "fields in a source are ANDed, sources are ORed", yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["bar"], ipBlocks: ["10.1.0.0/16"]}
  - source: {principals: ["cluster.local/ns/ops/sa/admin"]}`), checks: []check{
		allow(req{principal: spiffe("bar", "x"), ip: "10.1.2.3"}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "x"), ip: "10.9.2.3"}, ""),
		allow(req{principal: spiffe("ops", "admin"), ip: "10.9.2.3"}, rn("p", 0)),
	}},
	{name: "from, to and when are ANDed", yaml: ap("foo", "p", `
rules:
- from:
  - source: {namespaces: ["bar"]}
  to:
  - operation: {methods: ["GET"]}
  when:
  - key: request.headers[x-ok]
    values: ["1"]`), checks: []check{
		allow(req{principal: spiffe("bar", "x"), headers: map[string]string{"x-ok": "1"}}, rn("p", 0)),
		deny(req{principal: spiffe("bar", "x"), method: "POST", headers: map[string]string{"x-ok": "1"}}, ""),
		deny(req{principal: spiffe("bar", "x")}, ""),
	}},
	{name: "rules are ORed and the first matching rule is named", yaml: ap("foo", "p", `
rules:
- to:
  - operation: {paths: ["/a"]}
- to:
  - operation: {paths: ["/b"]}`), checks: []check{
		allow(req{path: "/a"}, rn("p", 0)),
		allow(req{path: "/b"}, rn("p", 1)),
		deny(req{path: "/c"}, ""),
	}},

	// --- Edge cases.
	{name: "empty rule matches everything", yaml: ap("foo", "p", `
rules:
- {}`), checks: []check{
		allow(req{}, rn("p", 0)),
		allow(req{principal: spiffe("x", "y"), method: "DELETE"}, rn("p", 0)),
	}},
	{name: "empty rule tcp", tcp: true, yaml: ap("foo", "p", `
rules:
- {}`), checks: []check{
		allow(req{}, rn("p", 0)),
	}},
	{name: "allow with no rules denies all", yaml: ap("foo", "p", `{}`), checks: []check{
		deny(req{}, ""),
		deny(req{principal: spiffe("foo", "x")}, ""),
	}},
	{name: "allow with no rules denies all tcp", tcp: true, yaml: ap("foo", "p", `{}`), checks: []check{
		deny(req{}, ""),
	}},
	{name: "deny with no rules denies nothing", yaml: ap("foo", "p", `action: DENY`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "no policies allows", yaml: "", checks: []check{
		allow(req{}, ""),
	}},
	{name: "deny beats allow", yaml: docs(ap("foo", "allow-all", `
rules:
- {}`), ap("foo", "deny-admin", `
action: DENY
rules:
- to:
  - operation: {paths: ["/admin*"]}`)), checks: []check{
		deny(req{path: "/admin/x"}, rn("deny-admin", 0)),
		allow(req{path: "/x"}, rn("allow-all", 0)),
	}},
	{name: "any of several allow policies", yaml: docs(ap("foo", "a", `
rules:
- to:
  - operation: {paths: ["/a"]}`), ap("foo", "b", `
rules:
- to:
  - operation: {paths: ["/b"]}`)), checks: []check{
		allow(req{path: "/a"}, rn("a", 0)),
		allow(req{path: "/b"}, rn("b", 0)),
		deny(req{path: "/c"}, ""),
	}},
	{name: "audit logs and allows", yaml: ap("foo", "p", `
action: AUDIT
rules:
- {}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "custom is enforced as deny", yaml: ap("foo", "p", `
action: CUSTOM
provider: {name: my-ext-authz}
rules:
- to:
  - operation: {paths: ["/admin"]}`), checks: []check{
		deny(req{path: "/admin"}, rn("p", 0)),
		allow(req{path: "/x"}, ""),
	}},
	{name: "dry-run deny is not enforced", yaml: pol("AuthorizationPolicy", "foo", "p", "  annotations: {istio.io/dry-run: \"true\"}", `
action: DENY
rules:
- {}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "dry-run allow alone enforces nothing", yaml: pol("AuthorizationPolicy", "foo", "p", "  annotations: {istio.io/dry-run: \"true\"}", `
rules:
- to:
  - operation: {paths: ["/only"]}`), checks: []check{
		allow(req{path: "/other"}, ""),
	}},
	{name: "dry-run allow beside an enforced allow", yaml: docs(
		pol("AuthorizationPolicy", "foo", "dry", "  annotations: {istio.io/dry-run: \"true\"}", `
rules:
- to:
  - operation: {paths: ["/dry"]}`),
		ap("foo", "real", `
rules:
- to:
  - operation: {paths: ["/real"]}`)), checks: []check{
		allow(req{path: "/real"}, rn("real", 0)),
		deny(req{path: "/dry"}, ""),
	}},

	// --- Selection.
	{name: "selector that does not match does not apply", yaml: ap("foo", "p", `
selector: {matchLabels: {app: other}}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "selector that matches applies", yaml: ap("foo", "p", `
selector: {matchLabels: {app: web, version: v1}}`), checks: []check{
		deny(req{}, ""),
	}},
	{name: "policy in another namespace does not apply", yaml: ap("bar", "p", `{}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "root namespace policy applies mesh-wide", yaml: ap("istio-system", "mesh", `
action: DENY
rules:
- to:
  - operation: {paths: ["/debug*"]}`), checks: []check{
		deny(req{path: "/debug/pprof"}, rbac.RuleName("istio-system", "mesh", 0)),
		allow(req{path: "/"}, ""),
	}},
	{name: "root namespace selector applies across namespaces", yaml: ap("istio-system", "mesh", `
selector: {matchLabels: {app: web}}
action: DENY
rules:
- {}`), checks: []check{
		deny(req{}, rbac.RuleName("istio-system", "mesh", 0)),
	}},
	{name: "configured root namespace", cfg: authz.Config{RootNamespace: "mesh-root"}, yaml: docs(
		ap("istio-system", "ignored", `{}`),
		ap("mesh-root", "mesh", `
action: DENY
rules:
- {}`)), checks: []check{
		deny(req{}, rbac.RuleName("mesh-root", "mesh", 0)),
	}},
	{name: "targetRef Gateway", workload: &policy.Workload{Namespace: "foo", Name: "gw", Labels: map[string]string{policy.GatewayNameLabel: "public"}},
		yaml: docs(ap("foo", "p", `
targetRefs:
- {group: gateway.networking.k8s.io, kind: Gateway, name: public}
action: DENY
rules:
- {}`), ap("foo", "other", `
targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: private}
action: DENY
rules:
- {}`)), checks: []check{
			deny(req{}, rn("p", 0)),
		}},
	{name: "targetRef Gateway does not select ordinary workloads", yaml: ap("foo", "p", `
targetRefs:
- {group: gateway.networking.k8s.io, kind: Gateway, name: public}
action: DENY
rules:
- {}`), checks: []check{
		allow(req{}, ""),
	}},
	{name: "targetRef Service", workload: &policy.Workload{Namespace: "foo", Name: "waypoint", Services: []string{"reviews"}},
		yaml: ap("foo", "p", `
targetRefs:
- {kind: Service, group: "", name: reviews}
action: DENY
rules:
- to:
  - operation: {methods: ["DELETE"]}`), checks: []check{
			deny(req{method: "DELETE"}, rn("p", 0)),
			allow(req{method: "GET"}, ""),
		}},
	{name: "targetRef GatewayClass in root namespace", workload: &policy.Workload{Namespace: "foo", Name: "gw", Labels: map[string]string{policy.GatewayClassNameLabel: "istio"}},
		yaml: ap("istio-system", "p", `
targetRefs:
- {group: gateway.networking.k8s.io, kind: GatewayClass, name: istio}
action: DENY
rules:
- {}`), checks: []check{
			deny(req{}, rbac.RuleName("istio-system", "p", 0)),
		}},
}

func TestAgreement(t *testing.T) {
	ev := envoyrbac.New()
	for _, tc := range agreementCases {
		t.Run(tc.name, func(t *testing.T) {
			e := engineFor(t, tc.yaml, tc.cfg)
			w := defaultWorkload
			if tc.workload != nil {
				w = *tc.workload
			}
			cfg, err := e.Compute(w)
			if err != nil {
				t.Fatalf("Compute: %v", err)
			}
			validate(t, cfg)
			for i, c := range tc.checks {
				r := c.r.build(t)
				var d envoyrbac.Decision
				if tc.tcp {
					d, err = ev.EvaluateNetwork(cfg.NetworkFilters, r)
				} else {
					d, err = ev.EvaluateHTTP(cfg.HTTPFilters, r)
				}
				if err != nil {
					t.Fatalf("check %d: evaluate: %v", i, err)
				}
				if d.Allowed != c.allow || d.Policy != c.by {
					t.Errorf("check %d (%+v): got allowed=%v by %q (%s), want allowed=%v by %q", i, c.r, d.Allowed, d.Policy, d.Reason, c.allow, c.by)
				}
			}
		})
	}
}

// validate checks every generated message with Envoy's own constraints.
func validate(t *testing.T, cfg *authz.WorkloadConfig) {
	t.Helper()
	for _, f := range cfg.HTTPFilters {
		if err := f.ValidateAll(); err != nil {
			t.Fatalf("HTTP filter: %v", err)
		}
	}
	for _, f := range cfg.NetworkFilters {
		if err := f.ValidateAll(); err != nil {
			t.Fatalf("network filter: %v", err)
		}
	}
	for _, c := range cfg.Listener.FilterChains {
		if err := c.ValidateAll(); err != nil {
			t.Fatalf("filter chain: %v", err)
		}
	}
}
