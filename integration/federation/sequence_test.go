package federation_test

import (
	"context"
	"crypto/x509"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	gofederation "github.com/spiffe/go-spiffe/v2/federation"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/ca/federation/secretsequence"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// TestSequenceAgreesAcrossReplicas: two replicas of a Kubernetes-backed
// CA (--material=kubernetes, one API server, each with its own data
// directory, as with an emptyDir per pod) serve their bundle endpoints
// with the same spiffe_sequence, and a rotation moves it forward on both,
// to one number again, fetched with go-spiffe's federation client.
func TestSequenceAgreesAcrossReplicas(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
	defer cancel()
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "castellan-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	web := testpki.New(t)
	webCert := testpki.WriteFile(t, dir, "web-cert.pem", web.ChainPEM())
	webKey := testpki.WriteFile(t, dir, "web-key.pem", testpki.KeyPEM(t, web.LeafKey))
	kube := []string{"--kubeconfig", api.Kubeconfig, "--material=kubernetes", "--namespace=castellan-system", "--trust-domain=a.test"}
	var endpoints []string
	for i := range 2 {
		addr := "127.0.0.1:" + strconv.Itoa(endpointPort(t))
		harness.StartCAProcess(t, append(kube, "--pod-name=castellan-ca-"+strconv.Itoa(i),
			"--bundle-endpoint-addr", addr, "--bundle-endpoint-profile", "https_web",
			"--bundle-endpoint-cert", webCert, "--bundle-endpoint-key", webKey)...)
		endpoints = append(endpoints, "https://localhost:"+port(addr)+"/")
	}
	roots := x509.NewCertPool()
	roots.AddCert(web.Root)
	fetch := func(url string) *spiffebundle.Bundle {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, err := gofederation.FetchBundle(fctx, tdA, url, gofederation.WithWebPKIRoots(roots))
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		return b
	}
	// state returns both endpoints' sequence numbers and JWT authority
	// counts. The second endpoint is asked over a second after the first,
	// so that numbers taken from the clock when a bundle is asked for
	// would differ.
	state := func() (seq [2]uint64, jwt [2]int) {
		for i, url := range endpoints {
			if i > 0 {
				time.Sleep(1100 * time.Millisecond)
			}
			b := fetch(url)
			n, ok := b.SequenceNumber()
			if !ok {
				t.Fatalf("%s serves no spiffe_sequence", url)
			}
			seq[i], jwt[i] = n, len(b.JWTAuthorities())
		}
		return seq, jwt
	}
	seq, jwt := state()
	if seq[0] != seq[1] || seq[0] == 0 {
		t.Fatalf("the replicas serve one bundle under sequence %d and %d", seq[0], seq[1])
	}
	if jwt != [2]int{1, 1} {
		t.Fatalf("JWT authorities %v, want one at each replica", jwt)
	}
	first := seq[0]

	// A JWT key rotation, prepared once for both: each replica serves
	// the new content under one higher number.
	harness.RunCastellan(t, 0, "jwt", "ca", "rotate", "prepare", "--jwt", "--kubeconfig", api.Kubeconfig,
		"--material=kubernetes", "--namespace=castellan-system")
	harness.WaitFor(t, waitTimeout, "the prepared key at both endpoints", func() bool { _, jwt := state(); return jwt == [2]int{2, 2} })
	seq, _ = state()
	if seq[0] != seq[1] || seq[0] <= first {
		t.Fatalf("after the rotation the replicas serve sequence %d and %d (before: %d)", seq[0], seq[1], first)
	}
	t.Logf("spiffe_sequence %d, then %d after the prepare, at both replicas", first, seq[0])
	// The number lives in the shared Secret, not in the replicas' data
	// directories.
	sec, err := api.Client.CoreV1().Secrets("castellan-system").Get(ctx, kubestore.DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Data[secretsequence.Key]; !ok {
		t.Fatalf("the CA Secret holds no %s: keys %v", secretsequence.Key, keys(sec.Data))
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
