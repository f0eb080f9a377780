package federation_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/trust/federated"
)

// TestTrustConfigMapCarriesFederatedBundles: a Kubernetes-backed CA
// publishes federated-bundles.json in the trust ConfigMap of every
// namespace, beside root-cert.pem, and republishes it when a foreign
// bundle changes, against a real API server.
func TestTrustConfigMapCarriesFederatedBundles(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	for _, ns := range []string{"castellan-system", "shop"} {
		if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c := startFakeEndpoint(t)
	harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--material=kubernetes",
		"--namespace=castellan-system", "--pod-name=castellan-ca-0", "--trust-domain=a.test",
		"--federate-with", "c.test="+c.srv.URL+"/bundle,https_web,roots="+c.rootsFile, "--federation-min-refresh", "1s")
	published := func() map[string]int {
		cm, err := api.Client.CoreV1().ConfigMaps("shop").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil || cm.Data["root-cert.pem"] == "" {
			return nil
		}
		doc, ok := cm.Data[federated.FileName]
		if !ok {
			return nil
		}
		bundles, err := federated.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("the ConfigMap's %s: %v", federated.FileName, err)
		}
		out := map[string]int{}
		for _, b := range bundles {
			out[b.TrustDomain().Name()] = len(b.X509Authorities())
		}
		return out
	}
	harness.WaitFor(t, waitTimeout, "c.test's bundle in the ConfigMap", func() bool { return published()["c.test"] == 1 })

	// c.test adds a root: the ConfigMap follows.
	next := c.good.Clone()
	next.AddX509Authority(newCARoot(t, "spiffe://c.test/ns/default/sa/next"))
	next.SetSequenceNumber(101)
	c.serve(next)
	harness.WaitFor(t, waitTimeout, "c.test's new root in the ConfigMap", func() bool { return published()["c.test"] == 2 })
}
