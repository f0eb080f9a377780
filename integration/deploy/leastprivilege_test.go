package deploy_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// networkPolicyOverlay is a test overlay: the standalone install plus the
// networkpolicy component.
const networkPolicyOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/networkpolicy
`

// TestCAConfigMapRights applies the standalone install (with the
// NetworkPolicy component, which the API server must accept) and then the
// istio overlay to an API server that enforces RBAC, and acts as the CA's
// service account with its own token: it may create, read and update the
// trust bundle ConfigMap in any namespace, and may neither read, list,
// update nor delete any other ConfigMap; under the istio overlay, istiod's
// istio-ca-root-cert is out of its reach too.
func TestCAConfigMapRights(t *testing.T) {
	api := harness.StartAPIServer(t, rbacFlags...)
	ctx := context.Background()
	fsys := withTestOverlay(t, "netpol", networkPolicyOverlay)
	ap := newApplier(t, api)
	objs := render(t, fsys, "/deploy/overlays/netpol")
	netpols := 0
	for _, o := range objs {
		if o.GetKind() == "NetworkPolicy" {
			netpols++
		}
	}
	if netpols == 0 {
		t.Fatal("the networkpolicy component renders no NetworkPolicy")
	}
	for obj, err := range ap.applyAll(ctx, objs, false) {
		t.Errorf("%s refused: %v", obj, err)
	}
	if t.Failed() {
		t.FailNow()
	}

	const ns = "team-a"
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app-config", "castellan-ca-root-cert"} {
		if _, err := api.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"k": "v"},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, asCA := clientAs(t, api, caNamespace, caSA)

	// The standalone install: the trust ConfigMap is istio-ca-root-cert.
	if _, err := asCA.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": "x"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the CA cannot create its trust ConfigMap: %v", err)
	}
	checkConfigMapRights(t, asCA, ns, "istio-ca-root-cert", "app-config", "castellan-ca-root-cert")

	// The istio overlay: the CA publishes castellan-ca-root-cert, and
	// istiod's istio-ca-root-cert is no longer its to change.
	for obj, err := range ap.applyAll(ctx, render(t, fsys, "/deploy/overlays/istio"), false) {
		t.Fatalf("istio overlay: %s refused: %v", obj, err)
	}
	checkConfigMapRights(t, asCA, ns, "castellan-ca-root-cert", "app-config", "istio-ca-root-cert")
}

// checkConfigMapRights checks, as the CA, that own in ns can be read
// (alone, by a name field selector too) and updated, and that none of
// others can be read, listed, updated or deleted.
func checkConfigMapRights(t *testing.T, asCA kubernetes.Interface, ns, own string, others ...string) {
	t.Helper()
	ctx := context.Background()
	cms := asCA.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, own, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the CA cannot read its trust ConfigMap %s: %v", own, err)
	}
	cm.Data = map[string]string{"root-cert.pem": "updated"}
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("the CA cannot update its trust ConfigMap %s: %v", own, err)
	}
	if _, err := cms.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + own}); err != nil {
		t.Fatalf("the CA cannot list %s by name, as its informer does: %v", own, err)
	}
	if _, err := cms.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the CA listed every ConfigMap in %s: err = %v, want Forbidden", ns, err)
	}
	if err := cms.Delete(ctx, own, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the CA deleted its trust ConfigMap: err = %v, want Forbidden", err)
	}
	for _, other := range others {
		if _, err := cms.Get(ctx, other, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the CA read ConfigMap %s: err = %v, want Forbidden", other, err)
		}
		upd := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: other, Namespace: ns}, Data: map[string]string{"k": "hijacked"}}
		if _, err := cms.Update(ctx, upd, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the CA updated ConfigMap %s: err = %v, want Forbidden", other, err)
		}
		if _, err := cms.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + other}); !apierrors.IsForbidden(err) {
			t.Errorf("the CA listed ConfigMap %s by name: err = %v, want Forbidden", other, err)
		}
		if err := cms.Delete(ctx, other, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the CA deleted ConfigMap %s: err = %v, want Forbidden", other, err)
		}
	}
}
