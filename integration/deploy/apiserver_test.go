package deploy_test

import (
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The harness's API server authorizes every request. Most tests here run
// the CA on the RBAC rules in deploy/, enforced, and one needs
// ClusterTrustBundles served, so they start the harness's server with
// extra flags.

// Flags for harness.StartAPIServer.
var (
	// rbacFlags enforce RBAC, as a real cluster does.
	rbacFlags = []string{"--authorization-mode=RBAC"}
	// ctbFlags serve certificates.k8s.io/v1beta1 ClusterTrustBundles, which
	// Kubernetes 1.36 keeps off by default (beta feature gate, beta API).
	ctbFlags = []string{
		"--feature-gates=ClusterTrustBundle=true",
		"--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true",
	}
)

// startCluster starts an API server that enforces RBAC, installs the CA's
// manifests (deploy/overlays/standalone) on it, and returns it with a
// client of the CA's service account.
func startCluster(t testing.TB) (*harness.APIServer, kubernetes.Interface) {
	t.Helper()
	api := harness.StartAPIServer(t, rbacFlags...)
	installCA(t, api)
	_, client := clientAs(t, api, caNamespace, caSA)
	return api, client
}

// clientAs returns a client that authenticates with a real token of the
// service account ns/sa, as a pod's client does.
func clientAs(t testing.TB, api *harness.APIServer, ns, sa string) (*rest.Config, kubernetes.Interface) {
	t.Helper()
	tok := api.Token(t, ns, sa, nil, 2*time.Hour)
	cfg := &rest.Config{
		Host:            api.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: api.Config.CAData, CAFile: api.Config.CAFile, ServerName: api.Config.ServerName, Insecure: api.Config.Insecure},
		BearerToken:     tok,
		QPS:             50,
		Burst:           100,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, client
}
