package policy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securityv1 "istio.io/api/security/v1"

	"github.com/castellan-mesh/castellan/authz/policy"
)

const header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n"

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// wantField and wantMsg must appear in the error; wantDoc is the
		// document number it must name.
		wantField string
		wantMsg   string
		wantDoc   int
	}{
		{name: "unknown spec field", in: header + "spec:\n  rulez: []", wantField: "spec.rulez", wantMsg: `unknown field "rulez"`},
		{name: "unknown nested field", in: header + "spec:\n  rules:\n  - from:\n    - source:\n        principalz: [a]", wantField: "spec.rules[0].from[0].source.principalz", wantMsg: "unknown field"},
		{name: "unknown top-level field", in: header + "spec: {}\nspce: {}", wantField: "spce", wantMsg: "unknown field"},
		{name: "unknown metadata field", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, nmespace: foo}\nspec: {}", wantField: "metadata.nmespace", wantMsg: "unknown field"},
		{name: "wrong type", in: header + "spec:\n  rules: {}", wantField: "spec.rules", wantMsg: "want a list"},
		{name: "wrong scalar type", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [{a: 1}]", wantField: "spec.rules[0].to[0].operation.ports[0]", wantMsg: "want a string"},
		{name: "unknown action", in: header + "spec:\n  action: PERMIT", wantField: "spec.action", wantMsg: `unknown value "PERMIT"`},
		{name: "bad CIDR", in: header + "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/8\", \"10.0.0.0/33\"]", wantField: "spec.rules[0].from[0].source.ipBlocks[1]", wantMsg: `invalid CIDR "10.0.0.0/33"`},
		{name: "bad IP", in: header + "spec:\n  rules:\n  - from:\n    - source:\n        notRemoteIpBlocks: [\"300.1.1.1\"]", wantField: "spec.rules[0].from[0].source.notRemoteIpBlocks[0]", wantMsg: `invalid IP address or CIDR "300.1.1.1"`},
		{name: "bad condition IP", in: header + "spec:\n  rules:\n  - when:\n    - key: destination.ip\n      notValues: [\"abc\"]", wantField: "spec.rules[0].when[0].notValues[0]", wantMsg: "invalid IP"},
		{name: "invalid port", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"70000\"]", wantField: "spec.rules[0].to[0].operation.ports[0]", wantMsg: `invalid port "70000"`},
		{name: "port zero", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        notPorts: [\"0\"]", wantField: "spec.rules[0].to[0].operation.notPorts[0]", wantMsg: "invalid port"},
		{name: "port wildcard", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"80*\"]", wantField: "ports[0]", wantMsg: "invalid port"},
		{name: "condition port", in: header + "spec:\n  rules:\n  - when:\n    - key: destination.port\n      values: [\"http\"]", wantField: "spec.rules[0].when[0].values[0]", wantMsg: "invalid port"},
		{name: "bad wildcard in the middle", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        hosts: [\"a*b\"]", wantField: "spec.rules[0].to[0].operation.hosts[0]", wantMsg: `bad wildcard in "a*b"`},
		{name: "bad double wildcard", in: header + "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"*a*\"]", wantField: "principals[0]", wantMsg: "bad wildcard"},
		{name: "bad wildcard in a condition", in: header + "spec:\n  rules:\n  - when:\n    - key: request.headers[x]\n      values: [\"a*b\"]", wantField: "spec.rules[0].when[0].values[0]", wantMsg: "bad wildcard"},
		{name: "malformed header key", in: header + "spec:\n  rules:\n  - when:\n    - key: \"request.headers[x y]\"\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: "malformed header key"},
		{name: "header key without brackets", in: header + "spec:\n  rules:\n  - when:\n    - key: request.headers\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: "malformed key"},
		{name: "header key unterminated", in: header + "spec:\n  rules:\n  - when:\n    - key: \"request.headers[x\"\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: "malformed header key"},
		{name: "header key empty", in: header + "spec:\n  rules:\n  - when:\n    - key: \"request.headers[]\"\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: "malformed header key"},
		{name: "claim key malformed", in: header + "spec:\n  rules:\n  - when:\n    - key: \"request.auth.claims[a]b\"\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: "malformed claim key"},
		{name: "unknown attribute", in: header + "spec:\n  rules:\n  - when:\n    - key: source.user\n      values: [a]", wantField: "spec.rules[0].when[0].key", wantMsg: `unknown attribute "source.user"`},
		{name: "condition without values", in: header + "spec:\n  rules:\n  - when:\n    - key: source.ip", wantField: "spec.rules[0].when[0]", wantMsg: "at least one of values and notValues"},
		{name: "empty value", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        methods: [\"\"]", wantField: "methods[0]", wantMsg: "empty value"},
		{name: "empty source", in: header + "spec:\n  rules:\n  - from:\n    - source: {}", wantField: "spec.rules[0].from[0].source", wantMsg: "must not be empty"},
		{name: "missing operation", in: header + "spec:\n  rules:\n  - to:\n    - {}", wantField: "spec.rules[0].to[0].operation", wantMsg: "must be set"},
		{name: "path template not last", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/{**}/a/{*}\"]", wantField: "paths[0]", wantMsg: "{**} must be the last operator"},
		{name: "path template mixed segment", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{*}.txt\"]", wantField: "paths[0]", wantMsg: "mixes an operator"},
		{name: "path template with star", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/*/b/{*}\"]", wantField: "paths[0]", wantMsg: "mixes an operator"},
		{name: "path brace", in: header + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{id}\"]", wantField: "paths[0]", wantMsg: "'{' and '}'"},
		{name: "selector and targetRefs", in: header + "spec:\n  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]", wantField: "spec", wantMsg: "only one of selector"},
		{name: "targetRef kind", in: header + "spec:\n  targetRefs: [{kind: Pod, name: g}]", wantField: "spec.targetRefs[0].kind", wantMsg: `unsupported kind "Pod"`},
		{name: "targetRef group", in: header + "spec:\n  targetRef: {kind: Gateway, name: g}", wantField: "spec.targetRef.group", wantMsg: "needs group"},
		{name: "targetRef cross namespace", in: header + "spec:\n  targetRefs: [{kind: Service, name: s, namespace: other}]", wantField: "spec.targetRefs[0].namespace", wantMsg: "cross-namespace"},
		{name: "bad selector label", in: header + "spec:\n  selector: {matchLabels: {\"a b\": c}}", wantField: "spec.selector.matchLabels[a b]", wantMsg: "invalid label key"},
		{name: "provider without custom", in: header + "spec:\n  provider: {name: x}", wantField: "spec.provider", wantMsg: "only valid with action CUSTOM"},
		{name: "service accounts with principals", in: header + "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [a], principals: [b]}", wantField: "spec.rules[0].from[0].source", wantMsg: "serviceAccounts cannot be set"},
		{name: "service account wildcard", in: header + "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [\"ns/*\"]}", wantField: "serviceAccounts[0]", wantMsg: "wildcards are not allowed"},
		{name: "missing name", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: foo}\nspec: {}", wantField: "metadata.name", wantMsg: "missing name"},
		{name: "bad name", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: \"A_B\"}\nspec: {}", wantField: "metadata.name", wantMsg: "not a valid name"},
		{name: "bad dry-run", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, annotations: {istio.io/dry-run: maybe}}\nspec: {}", wantField: "metadata.annotations[istio.io/dry-run]", wantMsg: "not true or false"},
		{name: "bad creation time", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, creationTimestamp: yesterday}\nspec: {}", wantField: "metadata.creationTimestamp", wantMsg: "RFC 3339"},
		{name: "unsupported version", in: "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {}", wantField: "apiVersion", wantMsg: "unsupported version"},
		{name: "invalid YAML", in: "apiVersion: [", wantMsg: "invalid YAML"},
		{name: "duplicate key", in: header + "spec: {}\nspec: {}", wantMsg: "invalid YAML"},
		{name: "not an object", in: "- a\n- b", wantMsg: "not an object"},
		{name: "peer unknown mode", in: "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICTER}", wantField: "spec.mtls.mode", wantMsg: `unknown value "STRICTER"`},
		{name: "peer port-level without selector", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}", wantField: "spec.portLevelMtls", wantMsg: "needs a workload selector"},
		{name: "peer port key", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    http: {mode: DISABLE}", wantField: "spec.portLevelMtls[http]", wantMsg: "not an unsigned 32-bit integer"},
		{name: "peer port zero", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    0: {mode: DISABLE}", wantField: "spec.portLevelMtls[0]", wantMsg: "invalid port 0"},
		{name: "peer port too big", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    70000: {mode: DISABLE}", wantField: "spec.portLevelMtls[70000]", wantMsg: "invalid port 70000"},
		{name: "error names the document", in: header + "spec: {}\n---\n# second\n" + header + "spec: {rulez: 1}", wantDoc: 2, wantField: "spec.rulez", wantMsg: "unknown field"},
		{name: "list item", in: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: p}\n  spec: {bad: 1}", wantField: "items[0].spec.bad", wantMsg: "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policy.Decode([]byte(tt.in), "policies.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			errs := policy.Errors(err)
			if len(errs) == 0 {
				t.Fatalf("error %v holds no *policy.Error", err)
			}
			found := false
			for _, e := range errs {
				if e.Origin.File != "policies.yaml" {
					t.Errorf("error %v: file = %q", e, e.Origin.File)
				}
				if strings.Contains(e.Field, tt.wantField) && strings.Contains(e.Err.Error(), tt.wantMsg) &&
					(tt.wantDoc == 0 || e.Origin.Doc == tt.wantDoc) {
					found = true
				}
			}
			if !found {
				t.Errorf("error %q does not name field %q with %q (document %d)", err, tt.wantField, tt.wantMsg, tt.wantDoc)
			}
		})
	}
}

func TestDecodeSkipsBadKeepsGood(t *testing.T) {
	in := header + "spec:\n  rules:\n  - from:\n    - source: {ipBlocks: [\"nope\"]}\n" +
		"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: foo}\nspec: {action: DENY}\n" +
		"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {whatever: 1}\n" +
		"---\n# only a comment\n" +
		"---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: foo, creationTimestamp: \"2026-01-02T03:04:05Z\"}\nspec: {mtls: {mode: STRICT}}\n"
	rs, err := policy.Decode([]byte(in), "mixed.yaml")
	if len(policy.Errors(err)) != 1 {
		t.Fatalf("errors = %v, want exactly one", err)
	}
	if e := policy.Errors(err)[0]; e.Origin.Doc != 1 || e.Origin.Line != 1 || e.Name != "p" {
		t.Errorf("error origin = %+v %q", e.Origin, e.Name)
	}
	if len(rs) != 3 {
		t.Fatalf("got %d resources, want 3", len(rs))
	}
	// The bad policy is kept in its fail-closed form: an ALLOW that
	// matches nothing.
	if bad := rs[0]; bad.Key().String() != "AuthorizationPolicy foo/p" || bad.Invalid == nil || len(bad.AuthorizationPolicy.GetRules()) != 0 ||
		bad.AuthorizationPolicy.GetAction() != securityv1.AuthorizationPolicy_ALLOW {
		t.Errorf("bad = %v invalid %v spec %v", bad.Key(), bad.Invalid, bad.AuthorizationPolicy)
	}
	rs = rs[1:]
	if rs[0].Key().String() != "AuthorizationPolicy foo/good" || rs[0].Origin.Doc != 2 || rs[0].Invalid != nil {
		t.Errorf("first = %v doc %d", rs[0].Key(), rs[0].Origin.Doc)
	}
	if rs[1].Kind != policy.KindPeerAuthentication || rs[1].APIVersion != "security.istio.io/v1beta1" ||
		!rs[1].Meta.CreationTimestamp.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) || rs[1].Origin.Doc != 4 {
		t.Errorf("second = %+v", rs[1])
	}
}

func TestDecodeForms(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // keys
	}{
		{name: "json", in: `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"j","namespace":"foo"},"spec":{"action":"DENY"}}`, want: []string{"AuthorizationPolicy foo/j"}},
		{name: "proto field names", in: header + "spec:\n  rules:\n  - from:\n    - source: {not_principals: [a]}", want: []string{"AuthorizationPolicy foo/p"}},
		{name: "default namespace", in: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n", want: []string{"AuthorizationPolicy default/p"}},
		{name: "list", in: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: a}\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: b}\n", want: []string{"PeerAuthentication default/a", "AuthorizationPolicy default/b"}},
		{name: "document markers and comments", in: "# leading\n---\n" + header + "---\n...\n---\n" + strings.Replace(header, "name: p", "name: q", 1), want: []string{"AuthorizationPolicy foo/p", "AuthorizationPolicy foo/q"}},
		{name: "crlf", in: strings.ReplaceAll(header+"spec: {}\n---\n"+strings.Replace(header, "name: p", "name: q", 1), "\n", "\r\n"), want: []string{"AuthorizationPolicy foo/p", "AuthorizationPolicy foo/q"}},
		{name: "empty", in: "", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := policy.Decode([]byte(tt.in), "x")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rs {
				got = append(got, r.Key().String())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", header+"spec: {}\n")
	write("sub/b.yml", strings.Replace(header, "name: p", "name: b", 1)+"spec: {action: DENY}\n")
	write("sub/c.json", `{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"c","namespace":"foo"}}`)
	write("sub/bad.yaml", header+"spec: {action: NOPE}\n") // duplicate name, and bad
	write("dup.yaml", header+"spec: {action: DENY}\n")
	write("README.md", "not yaml")
	write(".git/x.yaml", "garbage: [")

	rs, err := policy.Load(dir)
	var got []string
	for _, r := range rs {
		got = append(got, r.Key().String())
	}
	want := "AuthorizationPolicy foo/p,AuthorizationPolicy foo/b,PeerAuthentication foo/c"
	if strings.Join(got, ",") != want {
		t.Errorf("loaded %v, want %s", got, want)
	}
	errs := policy.Errors(err)
	if len(errs) != 3 {
		t.Fatalf("errors = %v, want the duplicate and the bad action (itself a duplicate)", err)
	}
	msgs := err.Error()
	for _, want := range []string{"dup.yaml", "duplicate of the resource at", "bad.yaml", `unknown value "NOPE"`} {
		if !strings.Contains(msgs, want) {
			t.Errorf("errors %q lack %q", msgs, want)
		}
	}

	if _, err := policy.Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("loading a missing path succeeded")
	}
	one, err := policy.Load(filepath.Join(dir, "a.yaml"))
	if err != nil || len(one) != 1 {
		t.Errorf("loading one file: %v %v", one, err)
	}
}

func TestDecodeObject(t *testing.T) {
	r, err := policy.DecodeObject([]byte(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"x","namespace":"ns","resourceVersion":"42","uid":"u","generation":3,"managedFields":[]},"spec":{"action":"AUDIT"},"status":{}}`), policy.Origin{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Meta.ResourceVersion != "42" || r.Meta.UID != "u" || r.Meta.Generation != 3 {
		t.Errorf("meta = %+v", r.Meta)
	}
	r, err = policy.DecodeObject([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}`), policy.Origin{})
	if r != nil || err != nil {
		t.Errorf("a Pod decoded to %v, %v", r, err)
	}
}

func TestWorkloadSelection(t *testing.T) {
	rs, err := policy.Decode([]byte(header+"spec: {selector: {matchLabels: {app: web}}}\n"), "x")
	if err != nil {
		t.Fatal(err)
	}
	p := rs[0]
	tests := []struct {
		name string
		w    policy.Workload
		root string
		want bool
	}{
		{"match", policy.Workload{Namespace: "foo", Labels: map[string]string{"app": "web", "x": "y"}}, "istio-system", true},
		{"label differs", policy.Workload{Namespace: "foo", Labels: map[string]string{"app": "api"}}, "istio-system", false},
		{"no labels", policy.Workload{Namespace: "foo"}, "istio-system", false},
		{"other namespace", policy.Workload{Namespace: "bar", Labels: map[string]string{"app": "web"}}, "istio-system", false},
		{"policy namespace is root", policy.Workload{Namespace: "bar", Labels: map[string]string{"app": "web"}}, "foo", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.AppliesTo(tt.w, tt.root); got != tt.want {
				t.Errorf("AppliesTo = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseWorkload(t *testing.T) {
	w, err := policy.ParseWorkload("foo/web", "app=web, version=v1,")
	if err != nil || w.Namespace != "foo" || w.Name != "web" || w.Labels["app"] != "web" || w.Labels["version"] != "v1" {
		t.Errorf("got %+v, %v", w, err)
	}
	for _, bad := range [][2]string{{"foo", ""}, {"/web", ""}, {"foo/web", "app"}, {"foo/web", "=x"}} {
		if _, err := policy.ParseWorkload(bad[0], bad[1]); err == nil {
			t.Errorf("ParseWorkload(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestRead(t *testing.T) {
	rs, err := policy.Read(strings.NewReader(header+"spec: {}\n"), "stdin")
	if err != nil || len(rs) != 1 || rs[0].Origin.File != "stdin" {
		t.Fatalf("Read: %d resources, %v", len(rs), err)
	}
	// A stream over the limit is refused, however long it goes on.
	_, err = policy.Read(zeros{}, "stdin")
	if err == nil || !strings.Contains(err.Error(), "stdin") || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Read of an endless stream: %v, want the limit named for stdin", err)
	}
}
