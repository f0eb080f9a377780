package deploy_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// TestIstiodWithCastellan applies Istio's istiod Deployment as its own
// chart renders it with deploy/overlays/istio-ca/istiod-values.yaml
// (integration/helm/testdata/istiod-castellan.yaml) to the API server,
// and checks that the castellan-agent it runs beside istiod is given only
// flags that castellan-agent defines.
func TestIstiodWithCastellan(t *testing.T) {
	objs := helmRendering(t, "istiod-castellan")
	if len(objs) != 1 || objs[0].GetKind() != "Deployment" {
		t.Fatalf("want istiod's Deployment, got %d objects", len(objs))
	}
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for obj, err := range newApplier(t, api).applyAll(ctx, objs, false) {
		t.Fatalf("%s refused: %v", obj, err)
	}

	var d appsv1.Deployment
	fromUnstructured(t, objs[0], &d)
	var agent *corev1.Container
	for i, c := range d.Spec.Template.Spec.InitContainers {
		if c.Name == "castellan-agent" {
			agent = &d.Spec.Template.Spec.InitContainers[i]
		}
	}
	if agent == nil {
		t.Fatal("istiod's Deployment runs no castellan-agent")
	}
	bin, sub, args := containerCommand(t, *agent)
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	defined := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if fields := strings.Fields(line); len(fields) > 0 && strings.HasPrefix(fields[0], "-") {
			defined[strings.TrimLeft(strings.TrimSuffix(fields[0], ","), "-")] = true
		}
	}
	if len(defined) == 0 || sub != "" {
		t.Fatalf("castellan-agent -h lists no flags (sub %q):\n%s", sub, out)
	}
	for _, a := range args {
		if name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "="); !defined[name] {
			t.Errorf("castellan-agent beside istiod is passed --%s, which it does not define", name)
		}
	}
}
