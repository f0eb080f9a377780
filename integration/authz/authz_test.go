package authz_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/metadata"
	"sigs.k8s.io/yaml"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/watch"
	"github.com/castellan-mesh/castellan/integration/harness"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// istioCRDs returns the CRD definitions shipped in the istio.io/api module.
func istioCRDs(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatalf("locating istio.io/api: %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var crds []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding %s: %v", path, err)
		}
		if obj == nil {
			continue
		}
		crds = append(crds, &unstructured.Unstructured{Object: obj})
	}
	if len(crds) == 0 {
		t.Fatalf("no CRDs in %s", path)
	}
	return crds
}

// installCRDs creates every Istio CRD and waits until the two security
// ones are established.
func installCRDs(t *testing.T, ctx context.Context, client dynamic.Interface) {
	t.Helper()
	for _, crd := range istioCRDs(t) {
		if _, err := client.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating CRD %s: %v", crd.GetName(), err)
		}
	}
	for _, name := range []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"} {
		waitUntil(t, ctx, "CRD "+name+" established", nil, func() bool {
			u, err := client.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		})
	}
}

// waitUntil polls cond, waking early when changed fires.
func waitUntil(t *testing.T, ctx context.Context, what string, changed func() <-chan struct{}, cond func() bool) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for !cond() {
		var ch <-chan struct{}
		if changed != nil {
			ch = changed()
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-ctx.Done():
			t.Fatalf("context ended waiting for %s", what)
		}
	}
}

func fromYAML(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

func gvrFor(u *unstructured.Unstructured) schema.GroupVersionResource {
	gv, _ := schema.ParseGroupVersion(u.GetAPIVersion())
	res := watch.AuthorizationPolicies.Resource
	if u.GetKind() == "PeerAuthentication" {
		res = watch.PeerAuthentications.Resource
	}
	return gv.WithResource(res)
}

// apply creates or updates an object written in YAML.
func apply(t *testing.T, ctx context.Context, client dynamic.Interface, doc string) {
	t.Helper()
	u := fromYAML(t, doc)
	rc := client.Resource(gvrFor(u)).Namespace(u.GetNamespace())
	cur, err := rc.Get(ctx, u.GetName(), metav1.GetOptions{})
	if err == nil {
		u.SetResourceVersion(cur.GetResourceVersion())
		_, err = rc.Update(ctx, u, metav1.UpdateOptions{})
	} else {
		_, err = rc.Create(ctx, u, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("applying %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
}

func TestLiveClusterPolicies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	api := harness.StartAPIServer(t)
	dyn, err := dynamic.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, ctx, dyn)

	// Workloads come from Pods.
	api.CreateServiceAccount(t, "shop", "default")
	api.CreateServiceAccount(t, "istio-system", "default")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "frontend-1", Namespace: "shop", Labels: map[string]string{"app": "frontend"}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: new(bool),
			Containers:                   []corev1.Container{{Name: "app", Image: "example.invalid/frontend"}},
		},
	}
	if _, err := api.Client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod: %v", err)
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	engine, err := authz.New(authz.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	src, err := watch.New(watch.Config{Client: dyn, Pods: meta, Workloads: engine, Logger: log}, engine)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("source: %v", err)
		}
	})

	config := func() *authz.WorkloadConfig {
		cfg, _, _ := engine.Workload("shop", "frontend-1")
		return cfg
	}
	waitUntil(t, ctx, "the pod to become a workload", engine.Changed, func() bool { return config() != nil && src.HasSynced() })

	ev := envoyrbac.New()
	decide := func(principal, path string) (bool, string) {
		t.Helper()
		cfg := config()
		d, err := ev.EvaluateHTTP(cfg.HTTPFilters, &envoyrbac.Request{
			Headers:        map[string][]string{":method": {"GET"}, ":path": {path}, ":authority": {"shop"}},
			DirectRemoteIP: netip.MustParseAddr("10.1.2.3"),
			Peer:           &envoyrbac.Peer{URISANs: []string{principal}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allowed, d.Policy
	}
	has := func(name string) bool {
		cfg := config()
		return cfg != nil && slices.ContainsFunc(cfg.Policies, func(k policy.Key) bool { return k.Name == name })
	}
	gateway := "spiffe://cluster.local/ns/ingress/sa/gateway"
	other := "spiffe://cluster.local/ns/ingress/sa/other"
	if ok, _ := decide(other, "/"); !ok {
		t.Fatal("denied with no policies")
	}

	// 1. Apply an ALLOW policy: only the gateway gets in.
	allowGateway := `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/ingress/sa/gateway"]}
`
	apply(t, ctx, dyn, allowGateway)
	waitUntil(t, ctx, "the ALLOW policy", engine.Changed, func() bool { return has("frontend") })
	gen := config().Generation
	if ok, by := decide(gateway, "/"); !ok || by != "ns[shop]-policy[frontend]-rule[0]" {
		t.Errorf("gateway: allowed=%v by %q", ok, by)
	}
	if ok, _ := decide(other, "/"); ok {
		t.Error("other principal allowed")
	}

	// 2. Update it: now the other principal is the one allowed.
	apply(t, ctx, dyn, strings.Replace(allowGateway, "sa/gateway", "sa/other", 1))
	waitUntil(t, ctx, "the updated policy", engine.Changed, func() bool { return config().Generation > gen })
	if ok, _ := decide(gateway, "/"); ok {
		t.Error("gateway still allowed after the update")
	}
	if ok, _ := decide(other, "/"); !ok {
		t.Error("other principal denied after the update")
	}

	// 3. A mesh-wide DENY from the root namespace, written as v1beta1.
	apply(t, ctx, dyn, `
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/debug/*"]}
`)
	waitUntil(t, ctx, "the mesh-wide policy", engine.Changed, func() bool { return has("deny-debug") })
	if ok, by := decide(other, "/debug/pprof"); ok || by != "ns[istio-system]-policy[deny-debug]-rule[0]" {
		t.Errorf("debug path: allowed=%v by %q", ok, by)
	}

	// 4. An invalid policy passes the CRD schema; it is reported and
	// enforced fail-closed: an invalid DENY denies everything it selects
	// (here the whole namespace). The others keep being served.
	apply(t, ctx, dyn, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source: {ipBlocks: ["10.0.0.0/99"]}
`)
	brokenKey := policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "shop", Name: "broken"}
	waitUntil(t, ctx, "the rejection", engine.Changed, func() bool { return engine.Problems()[brokenKey] != nil })
	if msg := engine.Problems()[brokenKey].Error(); !strings.Contains(msg, `spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR "10.0.0.0/99"`) {
		t.Errorf("problem = %q", msg)
	}
	if !has("broken") || !has("frontend") || !has("deny-debug") {
		t.Errorf("policies after the rejection: %v", config().Policies)
	}
	if ok, by := decide(gateway, "/"); ok || by != "ns[shop]-policy[broken]-rule[0]" {
		t.Errorf("invalid DENY not enforced fail-closed: allowed=%v by %q", ok, by)
	}
	if err := dyn.Resource(watch.AuthorizationPolicies).Namespace("shop").Delete(ctx, "broken", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "the invalid policy's deletion", engine.Changed, func() bool { return !has("broken") })

	// 5. Delete the ALLOW policy: everything not denied is allowed again.
	if err := dyn.Resource(watch.AuthorizationPolicies).Namespace("shop").Delete(ctx, "frontend", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "the deletion", engine.Changed, func() bool { return !has("frontend") })
	if ok, _ := decide(gateway, "/"); !ok {
		t.Error("gateway denied after the ALLOW policy was deleted")
	}

	// 6. PeerAuthentication: namespace STRICT, then deleted.
	if m := config().MTLS.Workload.Mode; m != mtls.Permissive {
		t.Errorf("initial mTLS mode %v", m)
	}
	apply(t, ctx, dyn, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
`)
	waitUntil(t, ctx, "STRICT mTLS", engine.Changed, func() bool { return config().MTLS.Workload.Mode == mtls.Strict })
	if err := dyn.Resource(watch.PeerAuthentications).Namespace("shop").Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "PERMISSIVE mTLS again", engine.Changed, func() bool { return config().MTLS.Workload.Mode == mtls.Permissive })

	// 7. Relabel the pod: a selector policy follows the labels.
	apply(t, ctx, dyn, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: canary-only, namespace: shop}
spec:
  selector: {matchLabels: {track: canary}}
  action: DENY
  rules:
  - {}
`)
	p, err := api.Client.CoreV1().Pods("shop").Get(ctx, "frontend-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels["track"] = "canary"
	if _, err := api.Client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "the relabelled pod to get the canary policy", engine.Changed, func() bool { return has("canary-only") })
	if ok, by := decide(gateway, "/"); ok || by != "ns[shop]-policy[canary-only]-rule[0]" {
		t.Errorf("canary: allowed=%v by %q", ok, by)
	}

	// 8. Deleting the pod removes the workload.
	if err := api.Client.CoreV1().Pods("shop").Delete(ctx, "frontend-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "the workload to go", engine.Changed, func() bool { return config() == nil })
}
