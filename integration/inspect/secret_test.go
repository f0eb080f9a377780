package inspect_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// TestSecret inspects Secrets stored in a real in-process API server, read
// through a kubeconfig as the command does: a kubernetes.io/tls Secret,
// Istio's cacerts, and broken ones.
func TestSecret(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	good := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/apps/sa/web"), testpki.WithLeafLifetime(25*time.Hour))
	stale := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/apps/sa/old"), testpki.WithLeafLifetime(70*time.Minute))
	other := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/apps/sa/other"), testpki.WithLeafLifetime(25*time.Hour))

	for _, ns := range []string{"apps", "istio-system"} {
		if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	secrets := []*corev1.Secret{
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web-tls"},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": good.ChainPEM(), "tls.key": testpki.KeyPEM(t, good.LeafKey), "ca.crt": testpki.CertPEM(good.Root)},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "cacerts"},
			Type:       corev1.SecretTypeOpaque,
			Data: map[string][]byte{
				"ca-cert.pem": testpki.CertPEM(good.Intermediate), "ca-key.pem": testpki.KeyPEM(t, good.IntermediateKey),
				"cert-chain.pem": testpki.CertPEM(good.Intermediate, good.Root), "root-cert.pem": testpki.CertPEM(good.Root),
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "stale"},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": stale.ChainPEM(), "tls.key": testpki.KeyPEM(t, stale.LeafKey), "ca.crt": testpki.CertPEM(stale.Root)},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "wrong-key"},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": good.ChainPEM(), "tls.key": testpki.KeyPEM(t, other.LeafKey), "ca.crt": testpki.CertPEM(other.Root)},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "leaf-only"},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{"tls.crt": testpki.CertPEM(good.Leaf), "ca.crt": testpki.CertPEM(good.Root)},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "garbage"},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{"tls.crt": []byte("-----BEGIN CERTIFICATE-----\n\x00\x01\x02")},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "password"},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{"password": []byte("hunter2")},
		},
	}
	for _, s := range secrets {
		if _, err := api.Client.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	client, _, err := source.Kubeconfig(api.Kubeconfig, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, secret string
		wantStatus   inspect.Status
		wantCodes    []string
		wantKind     string
		wantErr      string
	}{
		{name: "kubernetes.io/tls", secret: "apps/web-tls", wantStatus: inspect.StatusValid, wantKind: "leaf"},
		{name: "Istio cacerts", secret: "istio-system/cacerts", wantStatus: inspect.StatusValid, wantKind: "signing"},
		{name: "close to expiry", secret: "apps/stale", wantStatus: inspect.StatusWarning, wantCodes: []string{"low-lifetime"}},
		{name: "key and bundle of another CA", secret: "apps/wrong-key", wantStatus: inspect.StatusInvalid, wantCodes: []string{"key-mismatch", "verify-failed", "missing-intermediate"}},
		{name: "intermediate missing", secret: "apps/leaf-only", wantStatus: inspect.StatusInvalid, wantCodes: []string{"missing-intermediate", "verify-failed"}},
		{name: "garbage", secret: "apps/garbage", wantErr: "key tls.crt: pemder: PEM block 1 at line 1 is malformed"},
		{name: "no certificate keys", secret: "apps/password", wantErr: "(it has: password)"},
		{name: "not found", secret: "apps/nope", wantErr: `secrets "nope" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, name, _ := strings.Cut(tt.secret, "/")
			in, err := source.Secret(ctx, client, ns, name)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Error("a Secret value reached the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := inspect.Analyze(in, inspect.Options{})
			if r.Status != tt.wantStatus {
				t.Errorf("status = %s, want %s; findings %+v", r.Status, tt.wantStatus, r.Findings)
			}
			for _, code := range tt.wantCodes {
				if !hasFinding(r, code) {
					t.Errorf("no %s finding in %+v", code, r.Findings)
				}
			}
			if tt.wantKind != "" && r.Verification.SVID.Kind != tt.wantKind {
				t.Errorf("svid kind = %q, want %q", r.Verification.SVID.Kind, tt.wantKind)
			}
			if !r.Verification.Key.Checked && tt.wantStatus == inspect.StatusValid {
				t.Error("the Secret's key was not checked")
			}
		})
	}

	// The command, with the kubeconfig from $KUBECONFIG as kubectl would.
	env := []string{"KUBECONFIG=" + api.Kubeconfig}
	for _, tt := range []struct {
		secret   string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"apps/web-tls", nil, 0, "spiffe://cluster.local/ns/apps/sa/web"},
		{"istio-system/cacerts", []string{"--short"}, 0, "chain[1]  root"},
		{"apps/stale", nil, 5, "low-lifetime"},       // warnings
		{"apps/wrong-key", nil, 6, "DOES NOT MATCH"}, // invalid
		{"apps/garbage", nil, 1, ""},                 // error
		{"apps/nope", nil, 1, ""},
	} {
		t.Run("cli "+tt.secret, func(t *testing.T) {
			res := runCLI(t, env, nil, append([]string{"cert", "inspect", "--secret", tt.secret}, tt.args...)...)
			if res.code != tt.wantCode || !strings.Contains(res.stdout, tt.wantOut) {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", res.code, tt.wantCode, res.stdout, res.stderr)
			}
		})
	}
	t.Run("cli --kubeconfig and JSON", func(t *testing.T) {
		res := runCLI(t, nil, nil, "cert", "inspect", "--secret", "apps/web-tls", "--kubeconfig", api.Kubeconfig, "-o", "json")
		var r inspect.Report
		if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
			t.Fatalf("exit %d, output is not JSON: %v\n%s\n%s", res.code, err, res.stdout, res.stderr)
		}
		if res.code != 0 || r.Source != "secret:apps/web-tls[tls.crt]" || !r.Verification.Chain.Verified || !r.Verification.Key.Matches {
			t.Errorf("exit %d, report %+v", res.code, r)
		}
		if strings.Contains(res.stdout, "PRIVATE KEY") {
			t.Error("the private key reached the output")
		}
	})
}

func hasFinding(r *inspect.Report, code string) bool {
	for _, f := range r.Findings {
		if f.Code == code {
			return true
		}
	}
	return false
}
