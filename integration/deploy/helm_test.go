package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// helmRendering reads integration/helm/testdata/<name>.yaml, the chart
// deploy/helm/castellan as Helm's library renders it for one set of
// values (integration/helm holds the file equal to the chart).
func helmRendering(t *testing.T, name string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "helm", "testdata", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(obj) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: obj})
	}
	return objs
}

// comparable returns objs keyed by kind, namespace and name, as plain JSON
// values, without the labels only one tool sets (Helm's managed-by, and
// the part-of label the kustomize base sets but its components do not).
func comparable(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, o := range objs {
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		// The kustomize base tags the image; its components name it
		// untagged, which means the same :latest.
		data = bytes.ReplaceAll(data, []byte(`"image":"castellan"`), []byte(`"image":"castellan:latest"`))
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		if meta, ok := v["metadata"].(map[string]any); ok {
			if labels, ok := meta["labels"].(map[string]any); ok {
				delete(labels, "app.kubernetes.io/managed-by")
				delete(labels, "app.kubernetes.io/part-of")
				if len(labels) == 0 {
					delete(meta, "labels")
				}
			}
		}
		sortNamed(v)
		out[describe(o)] = v
	}
	return out
}

// sortNamed orders env, volumes and volumeMounts lists by name, wherever
// they are in v: kustomize's strategic merge moves a patched entry to the
// front, which changes nothing for the kubelet.
func sortNamed(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			if list, ok := child.([]any); ok && (k == "env" || k == "volumes" || k == "volumeMounts") {
				sort.SliceStable(list, func(i, j int) bool { return nameOf(list[i]) < nameOf(list[j]) })
			}
			sortNamed(child)
		}
	case []any:
		for _, child := range x {
			sortNamed(child)
		}
	}
}

func nameOf(v any) string {
	m, _ := v.(map[string]any)
	name, _ := m["name"].(string)
	return name
}

// TestHelmChartMatchesKustomize checks that the chart installs the same
// objects as the kustomize overlays: its default rendering against
// overlays/standalone, its production values against overlays/production,
// and its per-pod, istio and NetworkPolicy renderings
// against the per-pod component, and its monitoring and NetworkPolicy
// objects against deploy/monitoring and the networkpolicy component.
func TestHelmChartMatchesKustomize(t *testing.T) {
	fsys := withTestOverlay(t, "ctb", ctbOverlay)
	if err := fsys.WriteFile("/deploy/overlays/observability/kustomization.yaml", []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../standalone\n- ../../monitoring\ncomponents:\n- ../../components/networkpolicy\n")); err != nil {
		t.Fatal(err)
	}
	if err := fsys.WriteFile("/deploy/overlays/perpod/kustomization.yaml", []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../standalone\ncomponents:\n- ../../components/per-pod\n")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		chart, overlay string
		// only compares the kinds the chart case is about, when set.
		only []string
	}{
		{chart: "default", overlay: "/deploy/overlays/standalone"},
		{chart: "production", overlay: "/deploy/overlays/production"},
		{chart: "cluster-trust-bundle", overlay: "/deploy/overlays/ctb"},
		{chart: "policy-server", overlay: "/deploy/overlays/policy-server"},
		{chart: "istio", overlay: "/deploy/overlays/istio"},
		{chart: "istio-ca", overlay: "/deploy/overlays/istio-ca"},
		{chart: "per-pod", overlay: "/deploy/overlays/perpod"},
		{chart: "federation", overlay: "/deploy/overlays/federation"},
		{chart: "observability", overlay: "/deploy/overlays/observability", only: []string{"NetworkPolicy", "PodMonitor", "PrometheusRule", "ConfigMap"}},
	}
	for _, tt := range tests {
		t.Run(tt.chart, func(t *testing.T) {
			keep := func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
				var out []*unstructured.Unstructured
				for _, o := range objs {
					if (tt.chart == "per-pod" || tt.chart == "istio" || tt.chart == "istio-ca") && (o.GetKind() == "Namespace" || o.GetKind() == "CustomResourceDefinition") {
						continue // rendered without namespace.create; CRDs are the default's (helm --skip-crds where Istio is installed)
					}
					if len(tt.only) == 0 || contains(tt.only, o.GetKind()) {
						out = append(out, o)
					}
				}
				return out
			}
			got := comparable(t, keep(helmRendering(t, tt.chart)))
			want := comparable(t, keep(render(t, fsys, tt.overlay)))
			var keys []string
			for k := range want {
				keys = append(keys, k)
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					keys = append(keys, k)
				}
			}
			sort.Strings(keys)
			for _, k := range keys {
				g, inChart := got[k]
				w, inKustomize := want[k]
				switch {
				case !inChart:
					t.Errorf("%s is in %s but not in the chart", k, tt.overlay)
				case !inKustomize:
					t.Errorf("%s is in the chart but not in %s", k, tt.overlay)
				case !reflect.DeepEqual(g, w):
					gy, _ := yaml.Marshal(g)
					wy, _ := yaml.Marshal(w)
					t.Errorf("%s differs:\n--- chart ---\n%s\n--- kustomize ---\n%s", k, gy, wy)
				}
			}
		})
	}
}

// monitoringCRDs are stand-ins for the Prometheus Operator's CRDs, enough
// for the API server to store PodMonitors and PrometheusRules.
var monitoringCRDs = standInCRD("PodMonitor", "podmonitors") + "---\n" + standInCRD("PrometheusRule", "prometheusrules")

// standInCRD is a CustomResourceDefinition of monitoring.coreos.com/v1
// kind, namespaced, that stores objects of any shape.
func standInCRD(kind, plural string) string {
	return fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: %[2]s.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: %[1]s, plural: %[2]s}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`, kind, plural)
}

// TestHelmChartApplies applies the chart's default rendering server-side
// to an API server that enforces RBAC, then every other rendering (the
// production values, another trust domain and image, per-pod agents, plugged-in cacerts, Vault, the
// istio trust ConfigMap, PodMonitors with alerts and NetworkPolicies,
// remote clusters' kubeconfigs) as
// an upgrade: each object must be accepted.
func TestHelmChartApplies(t *testing.T) {
	api := harness.StartAPIServer(t, rbacFlags...)
	ctx := context.Background()
	ap := newApplier(t, api)
	var crds []*unstructured.Unstructured
	for _, doc := range strings.Split(monitoringCRDs, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		crds = append(crds, &unstructured.Unstructured{Object: obj})
	}
	for obj, err := range ap.applyAll(ctx, crds, false) {
		t.Fatalf("%s: %v", obj, err)
	}
	for _, name := range []string{"default", "production", "custom", "cluster-trust-bundle", "policy-server", "per-pod", "cacerts", "vault", "istio", "istio-ca", "observability", "multicluster", "federation", "federation-web"} {
		objs := helmRendering(t, name)
		for obj, err := range ap.applyAll(ctx, objs, false) {
			t.Errorf("%s: %s refused: %v", name, obj, err)
		}
		if !t.Failed() {
			t.Logf("%s: %d objects applied", name, len(objs))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
