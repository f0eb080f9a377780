package helm

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.yaml from the chart")

const (
	chartDir  = "../../deploy/helm/castellan"
	namespace = "castellan-system"
)

// cases are the value sets rendered; each has testdata/<name>.yaml.
var cases = []struct {
	name   string
	values string
}{
	// The defaults, with the namespace, as deploy/overlays/standalone.
	{name: "default", values: `namespace: {create: true}`},
	// The values of deploy/overlays/production.
	{name: "production", values: `
namespace: {create: true}
ca:
  replicas: 3
  priorityClassName: system-cluster-critical
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector: {matchLabels: {app.kubernetes.io/name: castellan-ca}}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {app.kubernetes.io/name: castellan-ca}}
  resources: {requests: {cpu: 500m, memory: 256Mi}, limits: {cpu: "2", memory: 1Gi}}
agent:
  priorityClassName: system-node-critical
`},
	{name: "custom", values: `
trustDomain: prod.example.com
image: {repository: registry.example.com/castellan, tag: v1.0.0, pullPolicy: Always}
agent:
  resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: "1", memory: 256Mi}}
`},
	{name: "per-pod", values: `agent: {mode: perPod}`},
	// The values of deploy/components/policy-server.
	{name: "policy-server", values: `{namespace: {create: true}, policyServer: {enabled: true}}`},
	// The values of deploy/components/cluster-trust-bundle.
	{name: "cluster-trust-bundle", values: `{namespace: {create: true}, clusterTrustBundle: {name: castellan-root}}`},
	{name: "cacerts", values: `material: {mode: cacerts, cacerts: {secretName: istio-cacerts}}`},
	{name: "vault", values: `material: {mode: vault, vault: {addr: "https://vault.vault.svc:8200", role: castellan}}`},
	{name: "istio", values: `ca: {trustConfigMap: castellan-ca-root-cert}`},
	// The values of deploy/overlays/istio-ca.
	{name: "istio-ca", values: `ca: {dnsSANAllow: ["istio-system/istiod=istiod.istio-system.svc,istiod.istio-system.svc.cluster.local"]}`},
	// A CA that checks the tokens of two clusters besides its own.
	{name: "multicluster", values: `
ca:
  clusterID: cluster1
  istioCompatibleMetrics: true
  remoteClusters:
  - {id: cluster2, secretName: castellan-remote-cluster2}
  - {id: cluster3, secretName: castellan-remote-cluster3}
`},
	// The values of deploy/components/federation with the networkpolicy
	// component.
	{name: "federation", values: `{namespace: {create: true}, networkPolicy: {enabled: true}, bundleEndpoint: {enabled: true}}`},
	// The https_web profile and two foreign trust domains.
	{name: "federation-web", values: `
networkPolicy: {enabled: true}
bundleEndpoint:
  enabled: true
  port: 9443
  profile: https_web
  refreshHint: 1m
  httpsWeb: {secretName: castellan-bundle-endpoint-tls}
  service: {type: LoadBalancer}
federateWith:
- {trustDomain: b.example, url: "https://bundles.b.example:8443/", profile: https_spiffe, endpointSPIFFEID: "spiffe://b.example/castellan/bundle-endpoint", configMap: castellan-federation-b}
- {trustDomain: c.example, url: "https://c.example:10443/bundle", profile: https_web, configMap: castellan-federation-c}
- {trustDomain: d.example, url: "https://bundles.d.example/", profile: https_web}
`},
	{name: "observability", values: `
serviceMonitor: {enabled: true}
prometheusRule: {enabled: true}
grafanaDashboard: {enabled: true}
networkPolicy: {enabled: true}
`},
}

// render renders the chart with values (YAML) as "helm template
// castellan -n castellan-system --include-crds" does: the CRDs, then every
// template in file-name order, one YAML stream.
func render(t *testing.T, c *chart.Chart, values string) (string, error) {
	t.Helper()
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatal(err)
	}
	if err := chartutil.ProcessDependenciesWithMerge(c, vals); err != nil {
		t.Fatal(err)
	}
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: "castellan", Namespace: namespace, IsInstall: true, Revision: 1,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(c, rv)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for _, crd := range c.CRDObjects() {
		out.WriteString("---\n# Source: " + crd.Filename + "\n")
		out.Write(bytes.TrimSpace(crd.File.Data))
		out.WriteString("\n")
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		body := strings.TrimSpace(files[n])
		if body == "" || strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		out.WriteString("---\n# Source: " + n + "\n" + body + "\n")
	}
	return out.String(), nil
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the chart is not valid: %v", err)
	}
	return c
}

// TestRender renders every case and compares it with its golden file.
func TestRender(t *testing.T) {
	c := loadChart(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := render(t, c, tc.values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			for i, doc := range strings.Split(got, "\n---\n") {
				var obj map[string]any
				if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
					t.Fatalf("document %d is not YAML: %v\n%s", i, err, doc)
				}
			}
			path := filepath.Join("testdata", tc.name+".yaml")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(want) != got {
				t.Fatalf("%s differs from the chart's rendering (go test -update rewrites it):\n%s", path, got)
			}
		})
	}
}

// TestRenderRefusesBadValues checks that a value the chart cannot honour
// fails the install with a message naming it.
func TestRenderRefusesBadValues(t *testing.T) {
	c := loadChart(t)
	tests := []struct{ name, values, want string }{
		{name: "vault without an address", values: `material: {mode: vault}`, want: "material.vault.addr"},
		{name: "unknown material", values: `material: {mode: etcd}`, want: "material.mode must be"},
		{name: "unknown agent mode", values: `agent: {mode: sidecar}`, want: "agent.mode must be"},
		{name: "remote cluster without a Secret", values: `ca: {remoteClusters: [{id: east}]}`, want: "ca.remoteClusters needs an id and a secretName"},
		{name: "unknown bundle endpoint profile", values: `bundleEndpoint: {enabled: true, profile: https}`, want: "bundleEndpoint.profile must be"},
		{name: "https_web without a Secret", values: `bundleEndpoint: {enabled: true, profile: https_web}`, want: "bundleEndpoint.httpsWeb.secretName"},
		{name: "federateWith without a profile", values: `federateWith: [{trustDomain: b.example, url: "https://b.example"}]`, want: "each of federateWith needs"},
		{name: "https_spiffe without a first bundle", values: `federateWith: [{trustDomain: b.example, url: "https://b.example", profile: https_spiffe, endpointSPIFFEID: "spiffe://b.example/x"}]`, want: "needs endpointSPIFFEID and configMap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := render(t, c, tt.values); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("render: err = %v, want one naming %q", err, tt.want)
			}
		})
	}
}

// TestCopiesMatchDeploy holds the chart's copies of deploy/ files equal to
// their sources: the CRDs, the alerts and the dashboard.
func TestCopiesMatchDeploy(t *testing.T) {
	for _, name := range []string{"authorizationpolicies.security.istio.io.yaml", "peerauthentications.security.istio.io.yaml"} {
		a, err1 := os.ReadFile(filepath.Join("../../deploy/crds", name))
		b, err2 := os.ReadFile(filepath.Join(chartDir, "crds", name))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("the chart's crds/%s differs from deploy/crds/%s (%v %v)", name, name, err1, err2)
		}
	}
	a, err1 := os.ReadFile("../../deploy/monitoring/dashboards/castellan.json")
	b, err2 := os.ReadFile(filepath.Join(chartDir, "files", "castellan-dashboard.json"))
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("the chart's files/castellan-dashboard.json differs from deploy/monitoring/dashboards/castellan.json (%v %v)", err1, err2)
	}
	var rule struct {
		Spec any `json:"spec"`
	}
	data, err := os.ReadFile("../../deploy/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatal(err)
	}
	var spec any
	data, err = os.ReadFile(filepath.Join(chartDir, "files", "prometheusrule-spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rule.Spec, spec) {
		t.Error("the chart's files/prometheusrule-spec.yaml differs from deploy/monitoring/prometheusrule.yaml's spec")
	}
}
