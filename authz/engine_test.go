package authz_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
)

func decodeOne(t testing.TB, doc string) *policy.Resource {
	t.Helper()
	rs, err := policy.Decode([]byte(doc), "test.yaml")
	if err != nil || len(rs) != 1 {
		t.Fatalf("decoding: %v (%d resources)", err, len(rs))
	}
	return rs[0]
}

// smallMesh registers 3 namespaces with workloads w0..w2 (app=w<i>).
func smallMesh(t testing.TB) *authz.Engine {
	e := newEngine(t, authz.Config{})
	for _, ns := range []string{"a", "b", "istio-system"} {
		for i := range 3 {
			e.SetWorkload(policy.Workload{Namespace: ns, Name: fmt.Sprintf("w%d", i), Labels: map[string]string{"app": fmt.Sprintf("w%d", i), "tier": "x"}})
		}
	}
	return e
}

func policiesOf(t testing.TB, e *authz.Engine, ns, name string) []string {
	t.Helper()
	cfg, ok, err := e.Workload(ns, name)
	if !ok || err != nil {
		t.Fatalf("workload %s/%s: ok=%v err=%v", ns, name, ok, err)
	}
	var out []string
	for _, k := range cfg.Policies {
		out = append(out, k.Namespace+"/"+k.Name)
	}
	return out
}

func TestEngineRecomputesOnlyAffected(t *testing.T) {
	e := smallMesh(t)
	steps := []struct {
		name string
		op   func() int
		want int
	}{
		{"selector policy", func() int {
			n, _ := e.Apply(decodeOne(t, ap("a", "p1", "selector: {matchLabels: {app: w1}}")))
			return n
		}, 1},
		{"selector policy moves to another workload", func() int {
			n, _ := e.Apply(decodeOne(t, ap("a", "p1", "selector: {matchLabels: {app: w2}}")))
			return n
		}, 2},
		{"selector policy matching nothing", func() int {
			n, _ := e.Apply(decodeOne(t, ap("a", "none", "selector: {matchLabels: {app: nope}}")))
			return n
		}, 0},
		{"namespace policy", func() int { n, _ := e.Apply(decodeOne(t, ap("b", "ns", "action: DENY"))); return n }, 3},
		{"mesh policy", func() int { n, _ := e.Apply(decodeOne(t, ap("istio-system", "mesh", "action: AUDIT"))); return n }, 9},
		{"mesh selector policy", func() int {
			n, _ := e.Apply(decodeOne(t, ap("istio-system", "mesh-sel", "selector: {matchLabels: {app: w0}}")))
			return n
		}, 3},
		{"policy in a namespace without workloads", func() int { n, _ := e.Apply(decodeOne(t, ap("empty", "x", "{}"))); return n }, 0},
		{"delete selector policy", func() int {
			return e.Delete(policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "p1"})
		}, 1},
		{"delete unknown policy", func() int {
			return e.Delete(policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "zz"})
		}, 0},
		{"namespace peer authentication", func() int {
			n, _ := e.Apply(decodeOne(t, pol("PeerAuthentication", "a", "strict", "", "mtls: {mode: STRICT}")))
			return n
		}, 3},
		{"workload peer authentication", func() int {
			n, _ := e.Apply(decodeOne(t, pol("PeerAuthentication", "b", "w1", "", "selector: {matchLabels: {app: w1}}\nmtls: {mode: DISABLE}")))
			return n
		}, 1},
		{"root selector peer authentication is ignored", func() int {
			n, _ := e.Apply(decodeOne(t, pol("PeerAuthentication", "istio-system", "sel", "", "selector: {matchLabels: {app: w1}}\nmtls: {mode: DISABLE}")))
			return n
		}, 0},
	}
	for _, s := range steps {
		if got := s.op(); got != s.want {
			t.Errorf("%s: recomputed %d workloads, want %d", s.name, got, s.want)
		}
	}
	if got := policiesOf(t, e, "a", "w0"); !slices.Equal(got, []string{"istio-system/mesh", "istio-system/mesh-sel"}) {
		t.Errorf("a/w0 policies = %v", got)
	}
	if got := policiesOf(t, e, "b", "w2"); !slices.Equal(got, []string{"b/ns", "istio-system/mesh"}) {
		t.Errorf("b/w2 policies = %v", got)
	}
	cfg, _, _ := e.Workload("a", "w2")
	if cfg.MTLS.Workload.Mode != mtls.Strict {
		t.Errorf("a/w2 mTLS = %v", cfg.MTLS.Workload)
	}
	cfg, _, _ = e.Workload("b", "w1")
	if cfg.MTLS.Workload.Mode != mtls.Disable {
		t.Errorf("b/w1 mTLS = %v", cfg.MTLS.Workload)
	}
}

func TestEngineRejectKeepsLastGood(t *testing.T) {
	e := smallMesh(t)
	key := policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "deny"}
	if _, err := e.Apply(decodeOne(t, ap("a", "deny", "action: DENY\nrules:\n- {}"))); err != nil {
		t.Fatal(err)
	}
	changed := e.Changed()
	e.Reject(key, fmt.Errorf("spec.rules[0]: bad"))
	select {
	case <-changed:
	default:
		t.Error("Reject did not signal a change")
	}
	if got := policiesOf(t, e, "a", "w0"); !slices.Contains(got, "a/deny") {
		t.Errorf("rejected update removed the policy: %v", got)
	}
	if p := e.Problems(); p[key] == nil {
		t.Errorf("problems = %v", p)
	}
	if _, err := e.Apply(decodeOne(t, ap("a", "deny", "action: DENY"))); err != nil {
		t.Fatal(err)
	}
	if p := e.Problems(); len(p) != 0 {
		t.Errorf("problem not cleared: %v", p)
	}
	// A CUSTOM policy is applied (as DENY) and reported.
	_, err := e.Apply(decodeOne(t, ap("a", "ext", "action: CUSTOM\nprovider: {name: x}\nrules:\n- {}")))
	if err == nil || !strings.Contains(err.Error(), "CUSTOM") {
		t.Errorf("CUSTOM: err = %v", err)
	}
	if got := policiesOf(t, e, "a", "w0"); !slices.Contains(got, "a/ext") {
		t.Errorf("CUSTOM policy not applied: %v", got)
	}
	if p := e.Problems(); p[policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "ext"}] == nil {
		t.Errorf("CUSTOM not reported: %v", p)
	}
}

func TestEngineWorkloadChanges(t *testing.T) {
	e := smallMesh(t)
	if _, err := e.Apply(decodeOne(t, ap("a", "p", "selector: {matchLabels: {role: db}}"))); err != nil {
		t.Fatal(err)
	}
	if got := policiesOf(t, e, "a", "w0"); len(got) != 0 {
		t.Errorf("before relabel: %v", got)
	}
	e.SetWorkload(policy.Workload{Namespace: "a", Name: "w0", Labels: map[string]string{"role": "db"}})
	if got := policiesOf(t, e, "a", "w0"); !slices.Equal(got, []string{"a/p"}) {
		t.Errorf("after relabel: %v", got)
	}
	// The old labels are no longer indexed: a policy on app=w0 misses it.
	if n, _ := e.Apply(decodeOne(t, ap("a", "q", "selector: {matchLabels: {app: w0}}"))); n != 0 {
		t.Errorf("stale label index: recomputed %d", n)
	}
	e.DeleteWorkload("a", "w0")
	if _, ok, _ := e.Workload("a", "w0"); ok {
		t.Error("deleted workload still present")
	}
	if n := e.Delete(policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "p"}); n != 0 {
		t.Errorf("deleting a policy of a deleted workload recomputed %d", n)
	}
}

// TestEngineIncrementalMatchesScratch applies random changes and checks,
// after each, that every workload's incrementally maintained configuration
// equals one computed from scratch.
func TestEngineIncrementalMatchesScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	namespaces := []string{"a", "b", "istio-system"}
	apps := []string{"w0", "w1", "w2", "w3"}
	e := newEngine(t, authz.Config{})
	var workloads []policy.Workload
	for _, ns := range namespaces {
		for i, app := range apps {
			w := policy.Workload{Namespace: ns, Name: fmt.Sprintf("pod%d", i), Labels: map[string]string{"app": app, "shard": fmt.Sprint(i % 2)}}
			if i == 3 {
				w.Labels[policy.GatewayNameLabel] = "gw"
				w.Services = []string{"svc"}
			}
			workloads = append(workloads, w)
			e.SetWorkload(w)
		}
	}
	randomPolicy := func(i int) string {
		ns := namespaces[rng.IntN(len(namespaces))]
		name := fmt.Sprintf("p%d", rng.IntN(12))
		switch rng.IntN(6) {
		case 0:
			return ap(ns, name, fmt.Sprintf("selector: {matchLabels: {app: %s}}\naction: DENY\nrules:\n- to:\n  - operation: {paths: [\"/%d\"]}", apps[rng.IntN(len(apps))], i))
		case 1:
			return ap(ns, name, fmt.Sprintf("selector: {matchLabels: {shard: \"%d\", app: %s}}", rng.IntN(2), apps[rng.IntN(len(apps))]))
		case 2:
			return ap(ns, name, fmt.Sprintf("rules:\n- from:\n  - source: {namespaces: [\"n%d\"]}", i))
		case 3:
			return ap(ns, name, "targetRefs:\n- {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\naction: AUDIT\nrules:\n- {}")
		case 4:
			return ap(ns, name, "targetRefs:\n- {kind: Service, name: svc}\nrules:\n- {}")
		default:
			return pol("PeerAuthentication", ns, name, "", fmt.Sprintf("selector: {matchLabels: {app: %s}}\nmtls: {mode: STRICT}", apps[rng.IntN(len(apps))]))
		}
	}
	for i := range 300 {
		switch rng.IntN(5) {
		case 0:
			kind := policy.KindAuthorizationPolicy
			if rng.IntN(2) == 0 {
				kind = policy.KindPeerAuthentication
			}
			e.Delete(policy.Key{Kind: kind, Namespace: namespaces[rng.IntN(len(namespaces))], Name: fmt.Sprintf("p%d", rng.IntN(12))})
		case 1:
			w := workloads[rng.IntN(len(workloads))]
			w.Labels = map[string]string{"app": apps[rng.IntN(len(apps))], "shard": fmt.Sprint(rng.IntN(2))}
			e.SetWorkload(w)
		default:
			e.Apply(decodeOne(t, randomPolicy(i)))
		}
		for _, w := range workloads {
			got, _, err := e.Workload(w.Namespace, w.Name)
			if err != nil {
				t.Fatal(err)
			}
			want, err := e.Compute(got.Workload)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Policies, want.Policies) || !filtersEqual(got, want) || got.MTLS.Workload != want.MTLS.Workload {
				t.Fatalf("step %d: %s: incremental %v differs from scratch %v", i, w, got.Policies, want.Policies)
			}
		}
	}
}

func filtersEqual(a, b *authz.WorkloadConfig) bool {
	if len(a.HTTPFilters) != len(b.HTTPFilters) || len(a.NetworkFilters) != len(b.NetworkFilters) {
		return false
	}
	for i := range a.HTTPFilters {
		if !proto.Equal(a.HTTPFilters[i], b.HTTPFilters[i]) {
			return false
		}
	}
	for i := range a.NetworkFilters {
		if !proto.Equal(a.NetworkFilters[i], b.NetworkFilters[i]) {
			return false
		}
	}
	return true
}

func TestEngineMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := authz.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, authz.Config{Metrics: m})
	e.SetWorkload(policy.Workload{Namespace: "a", Name: "w", Labels: map[string]string{"app": "w"}})
	if _, err := e.Apply(decodeOne(t, ap("a", "p", "{}"))); err != nil {
		t.Fatal(err)
	}
	e.Reject(policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "bad"}, fmt.Errorf("bad"))
	e.Delete(policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "a", Name: "p"})
	want := `
# HELP castellan_authz_policy_changes_total Policies applied or deleted, by kind and operation.
# TYPE castellan_authz_policy_changes_total counter
castellan_authz_policy_changes_total{kind="AuthorizationPolicy",op="apply"} 1
castellan_authz_policy_changes_total{kind="AuthorizationPolicy",op="delete"} 1
# HELP castellan_authz_policy_rejections_total Policies rejected as invalid or unsupported, by kind.
# TYPE castellan_authz_policy_rejections_total counter
castellan_authz_policy_rejections_total{kind="AuthorizationPolicy"} 1
# HELP castellan_authz_workload_recomputes_total Workload configurations recomputed.
# TYPE castellan_authz_workload_recomputes_total counter
castellan_authz_workload_recomputes_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if _, err := authz.NewMetrics(reg); err == nil {
		t.Error("registering twice succeeded")
	}
}
