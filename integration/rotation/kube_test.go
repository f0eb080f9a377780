package rotation_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubernetesRotationCommand rotates the root of a CA whose material is
// in a Kubernetes Secret with "castellan ca rotate --material=kubernetes",
// the same steps as for a data directory, against a real API server while
// the CA runs; the CA exports the rotation phase as every mode does.
func TestKubernetesRotationCommand(t *testing.T) {
	kubeRotation(t, "")
}

// TestKubernetesHSMRotationCommand does the same with the root key in an
// HSM (SoftHSM2, "--signer-key-uri pkcs11:..."): prepare creates the next
// root's key in the same token, the Secret holds certificates and the
// key's name but never a key, and the CA signs under the new root.
func TestKubernetesHSMRotationCommand(t *testing.T) {
	uri := harness.SoftHSMToken(t, "castellan", "root")
	api := kubeRotation(t, uri)
	sec, err := api.Client.CoreV1().Secrets("castellan-system").Get(context.Background(), "castellan-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k := range sec.Data {
		// A PEM key; jwt-keys.json only names the JWT keys in the HSM.
		if strings.HasSuffix(k, ".pem") && strings.Contains(k, "key") {
			t.Fatalf("the CA Secret holds %s although the root keys are in the HSM", k)
		}
	}
	if st := sec.Annotations["castellan.io/rotation"]; !strings.Contains(st, `"key":"castellan-root-`) {
		t.Fatalf("the rotation state does not name the new key in the HSM: %s", st)
	}
}

// kubeRotation runs a CA in Kubernetes mode, with its root key at keyURI
// if set, and rotates its root by hand.
func kubeRotation(t *testing.T, keyURI string) *harness.APIServer {
	api := harness.StartAPIServer(t)
	if _, err := api.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "castellan-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	caArgs := []string{"--kubeconfig", api.Kubeconfig, "--material=kubernetes",
		"--namespace=castellan-system", "--pod-name=castellan-ca-0", "--offline-bound-tokens=false", "--root-rotate-before=0"}
	prepareArgs := []string{"prepare"}
	if keyURI != "" {
		caArgs = append(caArgs, "--signer-key-uri", keyURI)
		prepareArgs = append(prepareArgs, "--signer-key-uri", keyURI)
	}
	p := harness.StartCAProcess(t, caArgs...)
	rotate := func(want int, contains string, args ...string) {
		t.Helper()
		args = append([]string{"ca", "rotate"}, append(args, "--material=kubernetes", "--kubeconfig", api.Kubeconfig, "--namespace=castellan-system")...)
		harness.RunCastellan(t, want, contains, args...)
	}
	bundle := func() int {
		resp, err := http.Get("http://" + p.HTTPAddr + "/bundle")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		certs, err := pemfile.ParseCertificates(b)
		if err != nil {
			t.Fatal(err)
		}
		return len(certs)
	}
	phase := func(want string, roots int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for p.Metrics(t).Value("castellan_ca_rotation_phase", "phase", want) != 1 || bundle() != roots {
			if time.Now().After(deadline) {
				t.Fatalf("the CA does not report phase %s with %d roots:\n%s", want, roots, p.Logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	rotate(0, "mode   kubernetes", "status")
	phase("steady", 1)
	rotate(0, "phase  prepared", prepareArgs...)
	phase("prepared", 2)
	rotate(1, "wait until", "activate")
	rotate(0, "phase  activated", "activate", "--force")
	phase("activated", 2)
	rotate(1, "may be valid until", "retire")
	rotate(0, "phase  steady", "retire", "--force")
	phase("steady", 1)
	if got := p.Metrics(t).Value("castellan_ca_rotation_status_errors_total"); got != 0 {
		t.Fatalf("castellan_ca_rotation_status_errors_total = %v", got)
	}
	if logs := p.Logs(); strings.Contains(logs, "does not hold usable material") {
		t.Fatalf("the CA could not load a step:\n%s", logs)
	}
	return api
}
