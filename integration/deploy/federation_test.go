package deploy_test

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestFederationComponent renders components/federation with and without
// the networkpolicy component: the CA serves its bundle endpoint on 8443
// (flags, container port, a Service of its own), and with NetworkPolicies
// the CA's policy admits 8443 and lets the CA reach 8443; without them no
// NetworkPolicy appears.
func TestFederationComponent(t *testing.T) {
	fsys := withTestOverlay(t, "ctb", ctbOverlay)
	for _, tc := range []struct {
		overlay string
		netpol  bool
	}{
		{"/deploy/overlays/federation", true},
		{"/deploy/overlays/federation-only", false},
	} {
		t.Run(tc.overlay, func(t *testing.T) {
			objs := render(t, fsys, tc.overlay)
			ca := findObject(t, objs, "Deployment", "castellan-ca")
			var d appsv1.Deployment
			fromUnstructured(t, ca, &d)
			c := d.Spec.Template.Spec.Containers[0]
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
			if env["CASTELLAN_BUNDLE_ENDPOINT_ADDR"] != ":8443" || env["CASTELLAN_BUNDLE_ENDPOINT_PROFILE"] != "https_spiffe" {
				t.Fatalf("CA env: %v", env)
			}
			var port bool
			for _, p := range c.Ports {
				port = port || (p.Name == "bundle-endpoint" && p.ContainerPort == 8443)
			}
			if !port {
				t.Fatalf("no bundle-endpoint container port: %v", c.Ports)
			}
			var svc corev1.Service
			fromUnstructured(t, findObject(t, objs, "Service", "castellan-bundle-endpoint"), &svc)
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8443 || svc.Spec.Ports[0].TargetPort.StrVal != "bundle-endpoint" ||
				svc.Spec.Selector["app.kubernetes.io/name"] != "castellan-ca" || svc.Namespace != caNamespace {
				t.Fatalf("Service castellan-bundle-endpoint: %+v", svc)
			}
			var np *unstructured.Unstructured
			for _, o := range objs {
				if o.GetKind() == "NetworkPolicy" && o.GetName() == "castellan-ca" {
					np = o
				}
			}
			if !tc.netpol {
				if np != nil {
					t.Fatal("a NetworkPolicy without the networkpolicy component")
				}
				return
			}
			if np == nil {
				t.Fatal("no castellan-ca NetworkPolicy")
			}
			var pol networkingv1.NetworkPolicy
			fromUnstructured(t, np, &pol)
			has := func(rules [][]networkingv1.NetworkPolicyPort) bool {
				for _, ports := range rules {
					for _, p := range ports {
						if p.Port != nil && p.Port.IntVal == 8443 {
							return true
						}
					}
				}
				return false
			}
			var in, out [][]networkingv1.NetworkPolicyPort
			for _, r := range pol.Spec.Ingress {
				in = append(in, r.Ports)
			}
			for _, r := range pol.Spec.Egress {
				out = append(out, r.Ports)
			}
			if !has(in) || !has(out) {
				t.Fatalf("the CA's NetworkPolicy does not open 8443 both ways: %+v", pol.Spec)
			}
		})
	}
}

func findObject(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return nil
}
