package rbac_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

func translate(t *testing.T, tr *rbac.Translator, doc string) (*rbac.Translation, error) {
	t.Helper()
	rs, err := policy.Decode([]byte(doc), "t.yaml")
	if err != nil || len(rs) != 1 {
		t.Fatalf("decode: %v", err)
	}
	return tr.Translate(rs[0])
}

const head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n"

func TestRuleName(t *testing.T) {
	for _, tt := range []struct {
		ns, name string
		i        int
	}{{"foo", "bar", 0}, {"a-b", "x.y", 12}, {"n", "p]-rule[3", 7}} {
		s := rbac.RuleName(tt.ns, tt.name, tt.i)
		ns, name, i, ok := rbac.ParseRuleName(s)
		if !ok || ns != tt.ns || name != tt.name || i != tt.i {
			t.Errorf("%q parsed to %q %q %d %v", s, ns, name, i, ok)
		}
	}
	for _, bad := range []string{"", "ns[a]", "ns[a]-policy[b]", "ns[a]-policy[b]-rule[x]", "ns[a]-policy[b]-rule[-1]", "policy"} {
		if _, _, _, ok := rbac.ParseRuleName(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestTranslate(t *testing.T) {
	tr := rbac.NewTranslator(rbac.Config{})
	tests := []struct {
		name       string
		spec       string
		wantAction rbacv3.RBAC_Action
		wantHTTP   int
		wantTCP    int
		wantNote   string
		wantErr    error
	}{
		{name: "allow", spec: "rules:\n- {}\n- {}", wantAction: rbacv3.RBAC_ALLOW, wantHTTP: 2, wantTCP: 2},
		{name: "audit is LOG", spec: "action: AUDIT\nrules:\n- {}", wantAction: rbacv3.RBAC_LOG, wantHTTP: 1, wantTCP: 1},
		{name: "no rules match nothing", spec: "action: DENY", wantAction: rbacv3.RBAC_DENY, wantHTTP: 1, wantTCP: 1},
		{name: "allow with HTTP field dropped for TCP", spec: "rules:\n- to:\n  - operation: {methods: [GET]}\n- {}", wantAction: rbacv3.RBAC_ALLOW, wantHTTP: 2, wantTCP: 1,
			wantNote: "ns[ns]-policy[p]-rule[0]: left out of TCP filters: ALLOW rule uses HTTP-only field methods"},
		{name: "deny with HTTP field kept broader for TCP", spec: "action: DENY\nrules:\n- to:\n  - operation: {paths: [/a], ports: [\"80\"]}", wantAction: rbacv3.RBAC_DENY, wantHTTP: 1, wantTCP: 1,
			wantNote: "ns[ns]-policy[p]-rule[0]: HTTP-only fields paths ignored in TCP filters"},
		{name: "custom", spec: "action: CUSTOM\nprovider: {name: x}\nrules:\n- {}", wantAction: rbacv3.RBAC_DENY, wantHTTP: 1, wantTCP: 1, wantErr: rbac.ErrCustomUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := translate(t, tr, head+"spec:\n"+indent(tt.spec))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got.Action != tt.wantAction || len(got.HTTP) != tt.wantHTTP || len(got.TCP) != tt.wantTCP {
				t.Errorf("got action %v, %d HTTP and %d TCP rules", got.Action, len(got.HTTP), len(got.TCP))
			}
			if tt.wantNote != "" && (len(got.Notes) != 1 || !strings.HasPrefix(got.Notes[0], tt.wantNote)) {
				t.Errorf("notes = %q, want %q", got.Notes, tt.wantNote)
			}
			for _, r := range append(got.HTTP, got.TCP...) {
				if err := r.Policy.ValidateAll(); err != nil {
					t.Errorf("%s: %v", r.Name, err)
				}
			}
		})
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n"
}

func TestBuild(t *testing.T) {
	tr := rbac.NewTranslator(rbac.Config{})
	tl := func(name, meta, spec string) *rbac.Translation {
		doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + "\n  namespace: ns\n" + meta + "spec:\n" + indent(spec)
		got, err := translate(t, tr, doc)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	dry := "  annotations: {istio.io/dry-run: \"true\"}\n"
	f, err := rbac.Build([]*rbac.Translation{
		tl("allow-dry", dry, "rules:\n- {}"),
		tl("deny", "", "action: DENY\nrules:\n- {}"),
		tl("deny-dry", dry, "action: DENY\nrules:\n- {}"),
		tl("audit", "", "action: AUDIT\nrules:\n- {}"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.HTTP) != 3 || len(f.Network) != 3 {
		t.Fatalf("got %d HTTP and %d network filters", len(f.HTTP), len(f.Network))
	}
	var h [3]httprbacv3.RBAC
	for i, hf := range f.HTTP {
		if hf.GetName() != rbac.HTTPFilterName {
			t.Errorf("filter %d name %q", i, hf.GetName())
		}
		if err := hf.GetTypedConfig().UnmarshalTo(&h[i]); err != nil {
			t.Fatal(err)
		}
	}
	if h[0].GetRules().GetAction() != rbacv3.RBAC_LOG || h[1].GetRules().GetAction() != rbacv3.RBAC_DENY {
		t.Errorf("order: %v, %v", h[0].GetRules().GetAction(), h[1].GetRules().GetAction())
	}
	if _, ok := h[1].GetShadowRules().GetPolicies()["ns[ns]-policy[deny-dry]-rule[0]"]; !ok || h[1].GetShadowRulesStatPrefix() != "istio_dry_run_deny_" {
		t.Errorf("deny shadow rules = %v (prefix %q)", h[1].GetShadowRules(), h[1].GetShadowRulesStatPrefix())
	}
	// Only a dry-run ALLOW: the filter enforces nothing.
	if h[2].GetRules() != nil || h[2].GetShadowRules().GetAction() != rbacv3.RBAC_ALLOW || h[2].GetShadowRulesStatPrefix() != "istio_dry_run_allow_" {
		t.Errorf("allow filter = %v", &h[2])
	}
	var n netrbacv3.RBAC
	if err := f.Network[1].GetTypedConfig().UnmarshalTo(&n); err != nil {
		t.Fatal(err)
	}
	if n.GetStatPrefix() != rbac.NetworkStatPrefix || n.GetRules().GetAction() != rbacv3.RBAC_DENY {
		t.Errorf("network filter = %v", &n)
	}

	empty, err := rbac.Build(nil)
	if err != nil || len(empty.HTTP) != 0 || len(empty.Network) != 0 {
		t.Errorf("no policies: %v %v", empty, err)
	}
}

// TestBuildMatchesMarshal checks that the concatenated encoding Build
// produces is exactly what a deterministic marshal of the whole config
// gives, and that the whole config passes ValidateAll.
func TestBuildMatchesMarshal(t *testing.T) {
	data, err := os.ReadFile("../testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := policy.Decode(data, "mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr := rbac.NewTranslator(rbac.Config{TrustDomainAliases: []string{"old.td"}})
	var ts []*rbac.Translation
	for _, r := range rs {
		if r.Kind != policy.KindAuthorizationPolicy {
			continue
		}
		tl, err := tr.Translate(r)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tl, tl) // a duplicate must not duplicate entries
	}
	f, err := rbac.Build(ts)
	if err != nil {
		t.Fatal(err)
	}
	check := func(a *anypb.Any, m interface {
		proto.Message
		ValidateAll() error
	}) {
		t.Helper()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		if err := m.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.GetValue(), want) {
			t.Errorf("%s: encoding differs from proto.Marshal", a.GetTypeUrl())
		}
	}
	for _, h := range f.HTTP {
		check(h.GetTypedConfig(), &httprbacv3.RBAC{})
	}
	for _, n := range f.Network {
		check(n.GetTypedConfig(), &netrbacv3.RBAC{})
	}
}

func TestLargeRegexNote(t *testing.T) {
	tr := rbac.NewTranslator(rbac.Config{})
	long := strings.Repeat("n", 63)
	got, err := translate(t, tr, head+"spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [\""+long+"/"+long+"\"]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Notes) != 1 || !strings.Contains(got.Notes[0], "re2.max_program_size.error_level") {
		t.Errorf("notes = %q", got.Notes)
	}
	got, err = translate(t, tr, head+"spec:\n  rules:\n  - from:\n    - source: {namespaces: [\"default\"]}\n")
	if err != nil || len(got.Notes) != 0 {
		t.Errorf("short regex: notes %q, err %v", got.Notes, err)
	}
}
