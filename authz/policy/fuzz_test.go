package policy_test

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic,
// every rejection must be a *policy.Error naming the input, and every
// accepted resource must be complete.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := policy.Decode(data, "fuzz.yaml")
		for _, e := range policy.Errors(err) {
			if e.Err == nil || e.Origin.File != "fuzz.yaml" {
				t.Fatalf("malformed error %#v", e)
			}
		}
		if err != nil && len(policy.Errors(err)) == 0 {
			t.Fatalf("error without *policy.Error: %v", err)
		}
		for _, r := range rs {
			if r.Meta.Name == "" || r.Meta.Namespace == "" || (r.AuthorizationPolicy == nil) == (r.PeerAuthentication == nil) {
				t.Fatalf("accepted a malformed resource: %+v", r)
			}
		}
	})
}

func addSeeds(f *testing.F) {
	for _, glob := range []string{"../testdata/*.yaml", "testdata/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, name := range files {
			data, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(header + "spec:\n  rules:\n  - when:\n    - key: request.auth.claims[a][b]\n      values: [\"x*\"]\n"))
	f.Add([]byte(header + "spec:\n  rules:\n  - to:\n    - operation: {paths: [\"/a/{*}/{**}\"], notHosts: [\"*.x\"]}\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls: {\"80\": {mode: STRICT}}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: x}}]"))
}

// FuzzTranslate runs whatever the decoder accepts through the whole chain:
// translation, filter assembly (ValidateAll), evaluation by the Envoy RBAC
// evaluator and mTLS rendering. None may fail on valid input.
func FuzzTranslate(f *testing.F) {
	addSeeds(f)
	f.Fuzz(checkDecodeChain)
}

var (
	fuzzTranslator = rbac.NewTranslator(rbac.Config{TrustDomainAliases: []string{"old.td"}})
	fuzzEvaluator  = envoyrbac.New()
)

// checkDecodeChain decodes data and runs what was accepted through the
// whole chain: translation, filter assembly, evaluation and mTLS rendering.
func checkDecodeChain(t *testing.T, data []byte) {
	tr, ev := fuzzTranslator, fuzzEvaluator
	probe := &envoyrbac.Request{
		Headers:        map[string][]string{":method": {"GET"}, ":path": {"/a/b"}, ":authority": {"x"}},
		DirectRemoteIP: netip.MustParseAddr("10.0.0.1"),
		Peer:           &envoyrbac.Peer{URISANs: []string{"spiffe://cluster.local/ns/a/sa/b"}},
	}
	w := policy.Workload{Namespace: "default", Name: "w", Labels: map[string]string{"a": "b"}}
	{
		rs, err := policy.Decode(data, "fuzz.yaml")
		if err != nil && len(policy.Errors(err)) == 0 {
			t.Fatalf("error without *policy.Error: %v", err)
		}
		var (
			trs []*rbac.Translation
			pas []*policy.Resource
		)
		for _, r := range rs {
			switch r.Kind {
			case policy.KindAuthorizationPolicy:
				t2, err := tr.Translate(r)
				if t2 == nil {
					t.Fatalf("valid policy %s did not translate: %v", r.Key(), err)
				}
				trs = append(trs, t2)
			case policy.KindPeerAuthentication:
				pas = append(pas, r)
			}
		}
		filters, err := rbac.Build(trs)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		for _, h := range filters.HTTP {
			var c httprbacv3.RBAC
			if err := h.GetTypedConfig().UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			if err := c.ValidateAll(); err != nil {
				t.Fatalf("generated config fails ValidateAll: %v", err)
			}
			if b, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(&c); !bytes.Equal(b, h.GetTypedConfig().GetValue()) {
				t.Fatal("assembled encoding differs from proto.Marshal")
			}
		}
		if _, err := ev.EvaluateHTTP(filters.HTTP, probe); err != nil {
			t.Fatalf("EvaluateHTTP: %v", err)
		}
		if _, err := ev.EvaluateNetwork(filters.Network, probe); err != nil {
			t.Fatalf("EvaluateNetwork: %v", err)
		}
		if _, err := mtls.Render(mtls.Resolve(pas, w, "istio-system"), mtls.RenderOptions{}); err != nil {
			t.Fatalf("Render: %v", err)
		}
	}
}

// FuzzParseConditionKey checks that condition keys never panic and that an
// accepted header key names a usable header.
func FuzzParseConditionKey(f *testing.F) {
	for _, s := range []string{"request.headers[x-a]", "request.auth.claims[a][b]", "source.ip", "request.headers[", "request.auth.claims[]]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k, err := policy.ParseConditionKey(key)
		if err != nil {
			return
		}
		if k.Attribute == policy.AttrRequestHeaders && (len(k.Args) != 1 || k.Args[0] == "") {
			t.Fatalf("header key %q parsed to %+v", key, k)
		}
	})
}
