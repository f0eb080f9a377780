package deploy_test

import (
	"context"
	"flag"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/go-logr/logr"
	etcdtesting "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	apiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/kubernetes/test/utils/ktesting"
)

// The harness's API server authorizes every request. Most tests here run
// the CA on the RBAC rules in deploy/, enforced, and one needs
// ClusterTrustBundles served, so they start servers with extra flags
// themselves, the way the harness does, and use the harness for the rest
// (service accounts, tokens).

// Flags for startAPIServer.
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

var quietKlog sync.Once

func silenceKlog() {
	quietKlog.Do(func() {
		if os.Getenv("CASTELLAN_KLOG") != "" {
			return
		}
		fs := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
		_ = fs.Set("logtostderr", "false")
		_ = fs.Set("alsologtostderr", "false")
		_ = fs.Set("stderrthreshold", "FATAL")
		klog.SetOutput(io.Discard)
		klog.SetLogger(logr.Discard())
	})
}

// startAPIServer starts an in-process kube-apiserver with embedded etcd
// and extra flags. The result has Config and Client set, enough for the
// harness's CreateServiceAccount and Token.
func startAPIServer(t testing.TB, flags ...string) *harness.APIServer {
	t.Helper()
	silenceKlog()
	_, storage := etcdtesting.NewUnsecuredEtcd3TestClientServer(t)
	tCtx := ktesting.InitCtx(klog.NewContext(context.Background(), logr.Discard()), t)
	srv, err := apiservertesting.StartTestServer(tCtx, apiservertesting.NewDefaultTestServerOptions(),
		append([]string{"--endpoint-reconciler-type=none"}, flags...), storage)
	if err != nil {
		t.Fatalf("starting kube-apiserver: %v", err)
	}
	t.Cleanup(srv.TearDownFn)
	cfg := rest.CopyConfig(srv.ClientConfig)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness.APIServer{Config: cfg, Client: client}
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
