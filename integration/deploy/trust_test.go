package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/trust"
	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// clusterTrustBundlesServed asks discovery whether api serves
// certificates.k8s.io/v1beta1 clustertrustbundles.
func clusterTrustBundlesServed(t testing.TB, api *harness.APIServer) bool {
	t.Helper()
	list, err := api.Client.Discovery().ServerResourcesForGroupVersion(certificatesv1beta1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "clustertrustbundles" })
}

// TestTrustDistribution checks that the leader publishes the root bundle
// to every namespace: the ConfigMap appears in a new namespace, and is
// repaired when edited or deleted.
func TestTrustDistribution(t *testing.T) {
	api := harness.StartAPIServer(t)
	installCA(t, api)
	_, caClient := clientAs(t, api, caNamespace, caSA)
	ctx := context.Background()
	cms := func(ns string) func() string { return func() string { return trustConfigMap(api, ns) } }

	r := startReplica(t, caClient, "ca-0", func(o *replicaOptions) {
		o.trustConfig = func(c *trust.Config) {
			c.ExcludeNamespaces = []string{"kube-public"}
			c.ClusterTrustBundleName = "castellan-root" // not served here: skipped
		}
	})
	want := string(caSecret(t, api).Data[kubestore.RootCertKey])
	if want == "" {
		t.Fatal("no root in the CA Secret")
	}
	equals := func(get func() string) func() bool { return func() bool { return get() == want } }

	for _, ns := range []string{"default", "kube-system", caNamespace} {
		harness.WaitFor(t, 10*time.Second, "the ConfigMap in "+ns, equals(cms(ns)))
	}

	// A new namespace.
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-new"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "the ConfigMap in a new namespace", equals(cms("team-new")))

	// Edited: the bundle replaced, and a key added.
	cm, err := api.Client.CoreV1().ConfigMaps("team-new").Get(ctx, trust.DefaultConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data = map[string]string{trust.DefaultKey: "-----BEGIN CERTIFICATE-----\nforged\n-----END CERTIFICATE-----\n", "extra": "x"}
	if _, err := api.Client.CoreV1().ConfigMaps("team-new").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "the edited ConfigMap to be repaired", func() bool {
		cm, err := api.Client.CoreV1().ConfigMaps("team-new").Get(ctx, trust.DefaultConfigMapName, metav1.GetOptions{})
		return err == nil && len(cm.Data) == 1 && cm.Data[trust.DefaultKey] == want
	})

	// Deleted.
	if err := api.Client.CoreV1().ConfigMaps("default").Delete(ctx, trust.DefaultConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "the deleted ConfigMap to be restored", equals(cms("default")))

	// An excluded namespace gets none.
	if _, err := api.Client.CoreV1().ConfigMaps("kube-public").Get(ctx, trust.DefaultConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("excluded namespace kube-public: Get = %v, want NotFound", err)
	}

	// Kubernetes 1.36 does not serve ClusterTrustBundles by default; the
	// controller skipped it and published the ConfigMaps all the same.
	if clusterTrustBundlesServed(t, api) {
		t.Log("this API server serves ClusterTrustBundles by default")
	} else if r.counter(t, "castellan_trust_sync_errors_total") != 0 {
		t.Fatal("trust sync errors although ClusterTrustBundles are simply not served")
	}
}

// TestClusterTrustBundle runs the CA on an API server that serves
// ClusterTrustBundles and enforces RBAC, with the RBAC of the
// cluster-trust-bundle component: the bundle is published and repaired.
func TestClusterTrustBundle(t *testing.T) {
	api := harness.StartAPIServer(t, append(append([]string{}, rbacFlags...), ctbFlags...)...)
	if !clusterTrustBundlesServed(t, api) {
		t.Fatal("the API server does not serve certificates.k8s.io/v1beta1 clustertrustbundles despite the flags")
	}
	objs := render(t, withTestOverlay(t, "ctb", ctbOverlay), "/deploy/overlays/ctb")
	if errs := newApplier(t, api).applyAll(context.Background(), objs, false); len(errs) > 0 {
		t.Fatalf("applying the overlay with the cluster-trust-bundle component: %v", errs)
	}
	_, caClient := clientAs(t, api, caNamespace, caSA)
	ctx := context.Background()
	startReplica(t, caClient, "ca-0", func(o *replicaOptions) {
		o.trustConfig = func(c *trust.Config) { c.ClusterTrustBundleName = "castellan-root" }
	})
	want := string(caSecret(t, api).Data[kubestore.RootCertKey])
	ctbs := api.Client.CertificatesV1beta1().ClusterTrustBundles()
	published := func() bool {
		b, err := ctbs.Get(ctx, "castellan-root", metav1.GetOptions{})
		return err == nil && b.Spec.TrustBundle == want && b.Spec.SignerName == ""
	}
	harness.WaitFor(t, 15*time.Second, "the ClusterTrustBundle", published)
	harness.WaitFor(t, 10*time.Second, "the ConfigMap in default", func() bool { return trustConfigMap(api, "default") == want })

	// Edited to trust a stranger's root: repaired.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: td, CommonName: "stranger"})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := ctbs.Get(ctx, "castellan-root", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.TrustBundle = string(pemfile.EncodeCertificates([]*x509.Certificate{stranger}))
	if _, err := ctbs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 15*time.Second, "the edited ClusterTrustBundle to be repaired", published)

	if err := ctbs.Delete(ctx, "castellan-root", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 15*time.Second, "the deleted ClusterTrustBundle to be restored", published)
}
