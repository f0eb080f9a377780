package harness

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	etcdtesting "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	apiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/kubernetes/test/utils/ktesting"
)

// APIServer is a running in-process kube-apiserver backed by embedded etcd.
type APIServer struct {
	// Config is an admin client configuration for the server.
	Config *rest.Config
	// Client is an admin client.
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file for the server.
	Kubeconfig string
	// Issuer is the "iss" of the service-account tokens the server issues.
	Issuer string

	// signer signs service-account tokens, as the server's own key does.
	signer jose.Signer
}

var quietKlog sync.Once

// silenceKlog discards the API server's global klog output, which is
// large and of no use to Castellan's tests, unless CASTELLAN_KLOG is set.
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

// StartAPIServer starts a kube-apiserver with embedded etcd and returns it
// ready: the default namespace exists and TokenRequest and TokenReview
// work. flags are added to the server's command line (for example
// "--authorization-mode=RBAC"; by default every request is authorized).
// It is stopped when the test ends.
func StartAPIServer(t testing.TB, flags ...string) *APIServer {
	t.Helper()
	silenceKlog()
	_, storage := etcdtesting.NewUnsecuredEtcd3TestClientServer(t)
	var tCtx ktesting.TContext
	if os.Getenv("CASTELLAN_KLOG") != "" {
		tCtx = ktesting.Init(t)
	} else {
		tCtx = ktesting.InitCtx(klog.NewContext(context.Background(), logr.Discard()), t)
	}
	opts := apiservertesting.NewDefaultTestServerOptions()
	srv, err := apiservertesting.StartTestServer(tCtx, opts, append([]string{
		// Nothing here needs the API server's own controllers beyond the
		// service-account token machinery.
		"--endpoint-reconciler-type=none",
	}, flags...), storage)
	if err != nil {
		t.Fatalf("harness: starting kube-apiserver: %v", err)
	}
	t.Cleanup(srv.TearDownFn)

	cfg := rest.CopyConfig(srv.ClientConfig)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("harness: API server client: %v", err)
	}
	a := &APIServer{Config: cfg, Client: client}
	if iss := srv.ServerOpts.Authentication.ServiceAccounts.Issuers; len(iss) > 0 {
		a.Issuer = iss[0]
	}
	a.signer = tokenSigner(t, client)
	a.Kubeconfig = writeKubeconfig(t, cfg)
	return a
}

// tokenSigner returns a signer holding the test server's service-account
// signing key. The test server writes that key to a temporary file and
// removes it once started, so it is read from the test server's source,
// which the test server itself already reads its test data from. The key
// is checked against the key set the API server publishes, so a token
// signed with it is one the server would issue.
func tokenSigner(t testing.TB, client kubernetes.Interface) jose.Signer {
	t.Helper()
	pc := reflect.ValueOf(apiservertesting.StartTestServer).Pointer()
	file, _ := runtime.FuncForPC(pc).FileLine(pc)
	if !filepath.IsAbs(file) {
		t.Fatalf("harness: cannot locate the kube-apiserver test server source (built with -trimpath?): %q", file)
	}
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("harness: reading the kube-apiserver test server source: %v", err)
	}
	start := bytes.Index(src, []byte("-----BEGIN EC PRIVATE KEY-----"))
	if start < 0 {
		t.Fatalf("harness: no service-account signing key in %s", file)
	}
	// The key is a Go raw string: it ends at the closing backquote.
	text, _, _ := bytes.Cut(src[start:], []byte("`"))
	block, _ := pem.Decode(append(text, '\n'))
	if block == nil {
		t.Fatalf("harness: malformed service-account signing key in %s", file)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("harness: parsing the service-account signing key: %v", err)
	}

	raw, err := client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("harness: reading the API server's service-account keys: %v", err)
	}
	var published jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &published); err != nil {
		t.Fatalf("harness: parsing the API server's service-account keys: %v", err)
	}
	kid := ""
	for _, k := range published.Keys {
		if pub, ok := k.Key.(*ecdsa.PublicKey); ok && pub.Equal(key.Public()) {
			kid = k.KeyID
		}
	}
	if kid == "" {
		t.Fatal("harness: the test server's key is not among the keys the API server publishes")
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: crypto.Signer(key)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

// writeKubeconfig writes an admin kubeconfig for cfg to a temp dir.
func writeKubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	cluster := &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		TLSServerName:            cfg.ServerName,
		InsecureSkipTLSVerify:    cfg.Insecure,
	}
	user := &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = cluster
	kc.AuthInfos["admin"] = user
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatalf("harness: writing kubeconfig: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// CreateServiceAccount creates the service account ns/name, and the
// namespace ns if it does not exist yet.
func (a *APIServer) CreateServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	ctx := context.Background()
	_, err := a.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("harness: creating namespace %s: %v", ns, err)
	}
	sa, err := a.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("harness: creating service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// DeleteServiceAccount deletes the service account ns/name. Tokens issued
// for it stop passing TokenReview.
func (a *APIServer) DeleteServiceAccount(t testing.TB, ns, name string) {
	t.Helper()
	if err := a.Client.CoreV1().ServiceAccounts(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("harness: deleting service account %s/%s: %v", ns, name, err)
	}
}

// Token returns a token for the service account ns/sa from TokenRequest,
// as the kubelet projects one into a pod. The API server enforces a
// minimum ttl of 10 minutes.
func (a *APIServer) Token(t testing.TB, ns, sa string, audiences []string, ttl time.Duration) string {
	t.Helper()
	secs := int64(ttl / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         audiences,
		ExpirationSeconds: &secs,
	}}
	res, err := a.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("harness: TokenRequest for %s/%s: %v", ns, sa, err)
	}
	return res.Status.Token
}

// SignToken returns a token for the existing service account ns/sa signed
// with the API server's own key, with validity times TokenRequest would
// refuse (for example an expired token: notBefore and expiry in the past).
// The token passes TokenReview exactly when a TokenRequest token with the
// same claims would.
func (a *APIServer) SignToken(t testing.TB, ns, sa string, audiences []string, notBefore, expiry time.Time) string {
	t.Helper()
	acct, err := a.Client.CoreV1().ServiceAccounts(ns).Get(context.Background(), sa, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("harness: reading service account %s/%s: %v", ns, sa, err)
	}
	type saRef struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	}
	type private struct {
		Namespace      string `json:"namespace"`
		ServiceAccount saRef  `json:"serviceaccount"`
	}
	claims := jwt.Claims{
		Issuer:    a.Issuer,
		Subject:   "system:serviceaccount:" + ns + ":" + sa,
		Audience:  jwt.Audience(audiences),
		IssuedAt:  jwt.NewNumericDate(notBefore),
		NotBefore: jwt.NewNumericDate(notBefore),
		Expiry:    jwt.NewNumericDate(expiry),
	}
	extra := map[string]any{"kubernetes.io": private{Namespace: ns, ServiceAccount: saRef{Name: sa, UID: string(acct.UID)}}}
	tok, err := jwt.Signed(a.signer).Claims(claims).Claims(extra).Serialize()
	if err != nil {
		t.Fatalf("harness: signing token: %v", err)
	}
	return tok
}

// SignTokenForUID is SignToken for a service account whose UID the caller
// already knows, without reading it from the API server, and with extra
// kubernetes.io claims (for example "pod": {"name", "uid"}) merged in.
func (a *APIServer) SignTokenForUID(t testing.TB, ns, sa, uid string, audiences []string, notBefore, expiry time.Time, extra map[string]any) string {
	t.Helper()
	k := map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": uid}}
	for key, v := range extra {
		k[key] = v
	}
	claims := jwt.Claims{
		Issuer:    a.Issuer,
		Subject:   "system:serviceaccount:" + ns + ":" + sa,
		Audience:  jwt.Audience(audiences),
		IssuedAt:  jwt.NewNumericDate(notBefore),
		NotBefore: jwt.NewNumericDate(notBefore),
		Expiry:    jwt.NewNumericDate(expiry),
	}
	tok, err := jwt.Signed(a.signer).Claims(claims).Claims(map[string]any{"kubernetes.io": k}).Serialize()
	if err != nil {
		t.Fatalf("harness: signing token: %v", err)
	}
	return tok
}
