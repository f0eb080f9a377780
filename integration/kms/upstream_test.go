package kms_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/upstream"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/vault"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestVaultPKIUpstream runs the CA as an intermediate under Vault's PKI
// root, with the intermediate's key in each key store. Workloads get
// leaf → Castellan intermediate → Vault root, which go-spiffe verifies
// against the bundle the CA serves (Vault's root).
func TestVaultPKIUpstream(t *testing.T) {
	v := harness.StartVault(t)
	root := v.EnablePKI(t)
	v.EnableTransit(t)
	roleID, secretID := v.AppRole(t, time.Hour)
	iss := newOfflineIssuer(t)
	w := iss.workload("default", "sleep")

	tests := []struct {
		name   string
		keyURI func(t *testing.T) string
		issuer string
	}{
		{name: "file key", keyURI: func(t *testing.T) string { return "file://" + filepath.Join(t.TempDir(), "intermediate-key.pem") }},
		{name: "file key, issuer-scoped path", issuer: "vault-root",
			keyURI: func(t *testing.T) string { return "file://" + filepath.Join(t.TempDir(), "intermediate-key.pem") }},
		{name: "SoftHSM2 key", keyURI: func(t *testing.T) string { softHSMToken(t, "castellan"); return softHSMURI("intermediate") }},
		{name: "Vault Transit key", keyURI: func(t *testing.T) string { return "vault-transit://transit/castellan-intermediate" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setup := caSetup{
				keyURI:    tt.keyURI(t),
				vaultAddr: v.Addr,
				vaultAuth: vault.AppRoleAuth{RoleID: roleID, SecretID: secretID},
				upstream:  true,
				upstreamCfg: func(c *upstream.Config) {
					c.Upstream = &upstream.VaultPKI{Client: c.Upstream.(*upstream.VaultPKI).Client, Issuer: tt.issuer}
				},
			}
			c, held := startKeyedCA(t, nil, setup, iss.option())
			s := w.fetchSVID(t, c)
			if len(s.chain) != 3 {
				t.Fatalf("chain has %d certificates, want leaf, intermediate, root", len(s.chain))
			}
			inter := s.chain[1]
			if !s.chain[2].Equal(root) {
				t.Errorf("chain ends with %q, want Vault's root", s.chain[2].Subject)
			}
			if !publicKeysEqual(inter.PublicKey, held.key.Public()) {
				t.Error("the intermediate is not for the key in the key store")
			}
			if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
				t.Errorf("intermediate IsCA=%v MaxPathLen=%d; want a CA that signs no CA", inter.IsCA, inter.MaxPathLen)
			}
			if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://cluster.local" {
				t.Errorf("intermediate URIs = %v, want the trust domain", inter.URIs)
			}
			if s.leaf().NotAfter.After(inter.NotAfter) {
				t.Errorf("leaf expires %s, after its intermediate %s", s.leaf().NotAfter, inter.NotAfter)
			}
			if got := fetchBundle(t, c.HTTPAddr); !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}))) {
				t.Errorf("/bundle is not Vault's root:\n%s", got)
			}
			m := c.Metrics(t)
			if got := m.Value("castellan_ca_intermediate_expiry_timestamp_seconds"); got != float64(inter.NotAfter.Unix()) {
				t.Errorf("castellan_ca_intermediate_expiry_timestamp_seconds = %v, want %d", got, inter.NotAfter.Unix())
			}
			if got := m.Value("castellan_vault_logins_total", "method", "approle", "result", "success"); got < 1 {
				t.Errorf("castellan_vault_logins_total{approle,success} = %v", got)
			}

			// A restart reuses the intermediate kept in the data
			// directory, with the key reopened from its store.
			c.Restart(t)
			s2 := w.fetchSVID(t, c)
			if !s2.chain[1].Equal(inter) {
				t.Error("the restarted CA signs under a different intermediate")
			}
			if got := c.Metrics(t).Value("castellan_ca_intermediate_renewals_total"); got != 0 {
				t.Errorf("the restart asked Vault for %v intermediates, want 0", got)
			}
			// A forced renewal gets a new certificate for the same key.
			if err := held.source.Renew(context.Background()); err != nil {
				t.Fatal(err)
			}
			s3 := w.fetchSVID(t, c)
			if s3.chain[1].Equal(inter) || !publicKeysEqual(s3.chain[1].PublicKey, inter.PublicKey) {
				t.Error("renewal did not give a new intermediate for the same key")
			}
		})
	}
}

// TestVaultKubernetesAuth has the CA log in to Vault with its Kubernetes
// service-account token. Vault checks the token with a real TokenReview
// against the in-process API server.
func TestVaultKubernetesAuth(t *testing.T) {
	api := harness.StartAPIServer(t)
	v := harness.StartVault(t)
	root := v.EnablePKI(t)
	ctx := context.Background()

	// Vault's reviewer: a service account allowed to create TokenReviews.
	api.CreateServiceAccount(t, "vault", "token-reviewer")
	_, err := api.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-token-reviewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "vault", Name: "token-reviewer"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reviewerJWT := api.Token(t, "vault", "token-reviewer", nil, 24*time.Hour)
	v.EnableAuth(t, "kubernetes")
	v.Write(t, "auth/kubernetes/config", map[string]any{
		"kubernetes_host":      apiServerURL(api),
		"kubernetes_ca_cert":   apiServerCA(t, api),
		"token_reviewer_jwt":   reviewerJWT,
		"disable_local_ca_jwt": true,
	})
	if err := v.API.Sys().PutPolicy("castellan", harness.CastellanPolicy); err != nil {
		t.Fatal(err)
	}
	v.Write(t, "auth/kubernetes/role/castellan", map[string]any{
		"bound_service_account_names":      "castellan",
		"bound_service_account_namespaces": "castellan-system",
		"audience":                         "vault",
		"token_policies":                   "castellan",
		"token_ttl":                        "1h",
	})

	api.CreateServiceAccount(t, "castellan-system", "castellan")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(api.Token(t, "castellan-system", "castellan", []string{"vault"}, time.Hour)), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newWorkload(t, api, "default", "sleep")
	c, _ := startKeyedCA(t, api, caSetup{
		keyURI:    "file://" + filepath.Join(t.TempDir(), "intermediate-key.pem"),
		vaultAddr: v.Addr,
		vaultAuth: vault.KubernetesAuth{Role: "castellan", TokenFile: tokenFile},
		upstream:  true,
	})
	s := w.fetchSVID(t, c)
	if !s.chain[len(s.chain)-1].Equal(root) {
		t.Fatal("the SVID does not chain to Vault's root")
	}
	if got := c.Metrics(t).Value("castellan_vault_logins_total", "method", "kubernetes", "result", "success"); got != 1 {
		t.Errorf("castellan_vault_logins_total{kubernetes,success} = %v, want 1", got)
	}

	// Vault refuses service-account tokens its role does not bind, after
	// its TokenReview: another account, or the wrong audience.
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, []byte(api.Token(t, "default", "sleep", []string{"vault"}, time.Hour)), 0o600)
	wrongAud := filepath.Join(t.TempDir(), "aud")
	os.WriteFile(wrongAud, []byte(api.Token(t, "castellan-system", "castellan", []string{"istio-ca"}, time.Hour)), 0o600)
	for name, file := range map[string]string{"other service account": other, "wrong audience": wrongAud} {
		t.Run(name, func(t *testing.T) {
			vc, err := vault.New(vault.Config{Address: v.Addr, Auth: vault.KubernetesAuth{Role: "castellan", TokenFile: file}})
			if err != nil {
				t.Fatal(err)
			}
			err = vc.Login(ctx)
			if err == nil {
				t.Fatal("Vault accepted the token")
			}
			if !strings.Contains(err.Error(), "auth/kubernetes/login") {
				t.Errorf("error %q does not name the login path", err)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
}

// apiServerURL is the API server's https URL.
func apiServerURL(api *harness.APIServer) string {
	h := strings.TrimSuffix(api.Config.Host, "/")
	if !strings.Contains(h, "://") {
		h = "https://" + h
	}
	return h
}

// apiServerCA returns the PEM certificate that anchors the API server's
// serving certificate, as Vault needs it to call TokenReview.
func apiServerCA(t *testing.T, api *harness.APIServer) string {
	t.Helper()
	host := strings.TrimPrefix(apiServerURL(api), "https://")
	conn, err := tls.Dial("tcp", host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	chain := conn.ConnectionState().PeerCertificates
	top := chain[len(chain)-1]
	// The anchor must verify the serving certificate for the address Vault
	// dials.
	pool := x509.NewCertPool()
	pool.AddCert(top)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	hostOnly := host[:strings.LastIndex(host, ":")]
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: hostOnly}); err != nil {
		t.Fatalf("the API server's serving chain does not verify for %s: %v", hostOnly, err)
	}
	return string(pemfile.EncodeCertificates([]*x509.Certificate{top}))
}

// TestVaultOutage stops Vault while the CA runs: the CA keeps signing with
// its current intermediate (never past it), counts and logs the failed
// renewals, and renews again once Vault is back.
func TestVaultOutage(t *testing.T) {
	v := harness.StartVault(t)
	root := v.EnablePKI(t)
	roleID, secretID := v.AppRole(t, time.Hour)
	iss := newOfflineIssuer(t)
	w := iss.workload("default", "sleep")
	c, held := startKeyedCA(t, nil, caSetup{
		keyURI:    "file://" + filepath.Join(t.TempDir(), "intermediate-key.pem"),
		vaultAddr: v.Addr,
		vaultAuth: vault.AppRoleAuth{RoleID: roleID, SecretID: secretID},
		upstream:  true,
		upstreamCfg: func(c *upstream.Config) {
			// Renew 6s after each renewal; the intermediate lives 60s.
			c.TTL = time.Minute
			c.RenewFraction = 0.1
			c.RetryMin, c.RetryMax = 200*time.Millisecond, time.Second
		},
	}, iss.option())
	first := w.fetchSVID(t, c).chain[1]

	v.Stop()
	harness.WaitFor(t, 30*time.Second, "failed renewals while Vault is down", func() bool {
		return c.Metrics(t).Value("castellan_ca_intermediate_renewal_failures_total") >= 3
	})
	for i := 0; i < 3; i++ {
		s := w.fetchSVID(t, c)
		if !s.chain[1].Equal(first) {
			t.Fatal("the intermediate changed while Vault was down")
		}
		if s.leaf().NotAfter.After(first.NotAfter) {
			t.Fatalf("a leaf signed during the outage expires %s, after its intermediate %s", s.leaf().NotAfter, first.NotAfter)
		}
	}
	code, msg := readyz(t, c)
	if code != 200 || !strings.Contains(msg, "renewal has failed") {
		t.Errorf("/readyz during the outage = %d %q; want ready, naming the failure", code, msg)
	}
	m := c.Metrics(t)
	if got := m.Value("castellan_ca_intermediate_renewal_failing"); got != 1 {
		t.Errorf("castellan_ca_intermediate_renewal_failing = %v during the outage", got)
	}
	if got := m.Value("castellan_ca_intermediate_expiry_timestamp_seconds"); got != float64(first.NotAfter.Unix()) {
		t.Errorf("castellan_ca_intermediate_expiry_timestamp_seconds = %v, want %d", got, first.NotAfter.Unix())
	}
	if held.source.LastError() == nil {
		t.Error("LastError() is nil during the outage")
	}

	v.Start(t)
	harness.WaitFor(t, 30*time.Second, "a renewal after Vault came back", func() bool {
		a := held.source.Authority()
		return !a.Cert.Equal(first) && held.source.LastError() == nil
	})
	s := w.fetchSVID(t, c)
	if s.chain[1].Equal(first) || !s.chain[2].Equal(root) {
		t.Error("after the outage the CA does not sign under a new intermediate from Vault's root")
	}
	if code, msg := readyz(t, c); code != 200 || strings.TrimSpace(msg) != "ok" {
		t.Errorf("/readyz after the outage = %d %q", code, msg)
	}
	if got := c.Metrics(t).Value("castellan_ca_intermediate_renewal_failing"); got != 0 {
		t.Errorf("castellan_ca_intermediate_renewal_failing = %v after the outage", got)
	}
}

// TestVaultTokenExpiry checks that the CA logs in again when its Vault
// token is revoked (Vault answers 403) or expires, and renews.
func TestVaultTokenExpiry(t *testing.T) {
	v := harness.StartVault(t)
	v.EnablePKI(t)
	roleID, secretID := v.AppRole(t, time.Hour)
	iss := newOfflineIssuer(t)
	w := iss.workload("default", "sleep")
	c, held := startKeyedCA(t, nil, caSetup{
		keyURI:    "file://" + filepath.Join(t.TempDir(), "intermediate-key.pem"),
		vaultAddr: v.Addr,
		vaultAuth: vault.AppRoleAuth{RoleID: roleID, SecretID: secretID},
		upstream:  true,
	}, iss.option())
	ctx := context.Background()
	logins := func() float64 {
		return c.Metrics(t).Value("castellan_vault_logins_total", "method", "approle", "result", "success")
	}
	if got := logins(); got != 1 {
		t.Fatalf("logins at start = %v, want 1", got)
	}

	// Revoked: every token the AppRole issued is gone; Vault answers 403.
	v.Write(t, "sys/leases/revoke-prefix/auth/approle/login", nil)
	if err := held.source.Renew(ctx); err != nil {
		t.Fatalf("renewal after the token was revoked: %v", err)
	}
	if got := logins(); got != 2 {
		t.Errorf("logins after a revocation = %v, want 2", got)
	}

	// Expired: tokens now live 2s.
	v.Write(t, "auth/approle/role/castellan", map[string]any{"token_ttl": "2s", "token_max_ttl": "2s"})
	v.Write(t, "sys/leases/revoke-prefix/auth/approle/login", nil)
	if err := held.source.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	before := logins()
	time.Sleep(3 * time.Second)
	if err := held.source.Renew(ctx); err != nil {
		t.Fatalf("renewal after the token expired: %v", err)
	}
	if got := logins(); got != before+1 {
		t.Errorf("logins after the token expired = %v, want %v", got, before+1)
	}
	w.fetchSVID(t, c)
}
