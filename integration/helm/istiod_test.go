package helm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

// istiodValuesFile is what deploy/overlays/istio-ca gives Istio's istiod
// chart to make Castellan its CA.
const istiodValuesFile = "../../deploy/overlays/istio-ca/istiod-values.yaml"

// istiodChartDir returns Istio's istiod chart in the istio.io/istio module
// that tools/pilot-agent pins (the module pilot-agent and pilot-discovery
// are built from).
func istiodChartDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
	cmd.Dir = filepath.Join("..", "..", "tools", "pilot-agent")
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("locating istio.io/istio from tools/pilot-agent (make tools fetches it): %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "manifests", "charts", "istio-control", "istio-discovery")
}

// TestIstiodChartWithCastellan renders Istio's own istiod chart with
// istiod-values.yaml, as "helm template istiod -n istio-system -f
// istiod-values.yaml" does, and checks that the values land where the
// guide says: istiod's CA off, its serving certificate from the
// castellan-agent native sidecar, and CA_ADDR in every injected sidecar.
// The rendered Deployment is testdata/istiod-castellan.yaml, which
// integration/deploy applies to an API server (-update rewrites it).
func TestIstiodChartWithCastellan(t *testing.T) {
	c, err := loader.Load(istiodChartDir(t))
	if err != nil {
		t.Fatalf("loading Istio's istiod chart: %v", err)
	}
	data, err := os.ReadFile(istiodValuesFile)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ReadValues(data)
	if err != nil {
		t.Fatalf("%s: %v", istiodValuesFile, err)
	}
	// An image for istiod itself, as a release sets it.
	vals["global"].(map[string]any)["hub"] = "docker.io/istio"
	vals["global"].(map[string]any)["tag"] = "1.29.0"
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: "istiod", Namespace: "istio-system", IsInstall: true, Revision: 1,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(c, rv)
	if err != nil {
		t.Fatalf("rendering Istio's istiod chart with %s: %v", istiodValuesFile, err)
	}
	deployment := strings.TrimSpace(files["istiod/templates/deployment.yaml"])
	if deployment == "" {
		t.Fatal("the chart rendered no istiod Deployment")
	}
	var d struct {
		Kind string `json:"kind"`
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `json:"initContainers"`
					Containers     []container `json:"containers"`
					Volumes        []struct {
						Name     string         `json:"name"`
						EmptyDir map[string]any `json:"emptyDir"`
					} `json:"volumes"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(deployment), &d); err != nil {
		t.Fatalf("the rendered Deployment: %v", err)
	}
	pod := d.Spec.Template.Spec
	var agent, discovery *container
	for i := range pod.InitContainers {
		if pod.InitContainers[i].Name == "castellan-agent" {
			agent = &pod.InitContainers[i]
		}
	}
	for i := range pod.Containers {
		if pod.Containers[i].Name == "discovery" {
			discovery = &pod.Containers[i]
		}
	}
	if agent == nil || discovery == nil {
		t.Fatalf("the rendered Deployment lacks castellan-agent (%v) or discovery (%v)", agent != nil, discovery != nil)
	}
	if agent.RestartPolicy != "Always" {
		t.Errorf("castellan-agent is not a native sidecar: restartPolicy %q", agent.RestartPolicy)
	}
	for _, want := range []string{"--output-layout=istiod", "--output-dir=/var/run/secrets/castellan", "--dns-name=istiod.istio-system.svc"} {
		if !slices.Contains(agent.Args, want) {
			t.Errorf("castellan-agent lacks %s: %q", want, agent.Args)
		}
	}
	for _, want := range []string{"--tlsCertFile=/var/run/secrets/castellan/tls.crt", "--tlsKeyFile=/var/run/secrets/castellan/tls.key", "--caCertFile=/var/run/secrets/castellan/ca.crt"} {
		if !slices.Contains(discovery.Args, want) {
			t.Errorf("istiod lacks %s: %q", want, discovery.Args)
		}
	}
	if v, ok := discovery.env("ENABLE_CA_SERVER"); !ok || v != "false" {
		t.Errorf("istiod's ENABLE_CA_SERVER = %q (set %v), want false", v, ok)
	}
	volumes := map[string]bool{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = true
		if v.Name == "castellan-istiod-tls" && v.EmptyDir == nil {
			t.Error("castellan-istiod-tls is not an emptyDir")
		}
	}
	// Every volume the agent mounts is one the chart (or the values) defines.
	for _, m := range agent.VolumeMounts {
		if !volumes[m.Name] {
			t.Errorf("castellan-agent mounts %s, which the rendered pod has no volume for", m.Name)
		}
	}
	if !slices.ContainsFunc(discovery.VolumeMounts, func(m mount) bool {
		return m.Name == "castellan-istiod-tls" && m.MountPath == "/var/run/secrets/castellan"
	}) {
		t.Error("istiod does not mount castellan-istiod-tls at /var/run/secrets/castellan")
	}
	// Injected sidecars ask Castellan: the injector's values carry caAddress.
	if injector := files["istiod/templates/istiod-injector-configmap.yaml"]; !strings.Contains(injector, `"caAddress": "castellan.castellan-system.svc:15012"`) {
		t.Error("the sidecar injector's values do not name Castellan as caAddress")
	}

	golden := filepath.Join("testdata", "istiod-castellan.yaml")
	got := []byte("# Istio's istiod chart rendered with deploy/overlays/istio-ca/istiod-values.yaml\n# (integration/helm TestIstiodChartWithCastellan; go test -update rewrites it).\n" + deployment + "\n")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date; run go test -update", golden)
	}
}

type mount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
}

type container struct {
	Name          string   `json:"name"`
	Args          []string `json:"args"`
	RestartPolicy string   `json:"restartPolicy"`
	Env           []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	VolumeMounts []mount `json:"volumeMounts"`
}

func (c *container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}
