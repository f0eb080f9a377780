package ca_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// TestMultiCluster: two API servers stand for two clusters. The CA's own
// cluster (ClusterID Kubernetes) and a remote one (east) each check their
// own tokens; a token presented under the other cluster's ID is refused,
// an unknown ClusterID is refused and counted, and each cluster's watch
// revokes its own tokens. Istio's metric aliases move with Castellan's.
func TestMultiCluster(t *testing.T) {
	local := harness.StartAPIServer(t)
	east := harness.StartAPIServer(t)
	aud := []string{"istio-ca"}
	local.CreateServiceAccount(t, "alpha", "app")
	east.CreateServiceAccount(t, "beta", "app")
	// The same namespace and name in both clusters: different accounts.
	local.CreateServiceAccount(t, "shop", "web")
	east.CreateServiceAccount(t, "shop", "web")

	ca := harness.StartCAProcess(t, "--kubeconfig", local.Kubeconfig, "--remote-cluster", "east="+east.Kubeconfig,
		"--istio-compatible-metrics")
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: ca.Roots(t), ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	csrs, err := loadgen.MakeCSRs(1)
	if err != nil {
		t.Fatal(err)
	}
	call := func(token string, clusters ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, c := range clusters {
			ctx = metadata.AppendToOutgoingContext(ctx, "ClusterID", c)
		}
		chain, err := client.CreateCertificateRequest(ctx, token, &pb.IstioCertificateRequest{Csr: string(csrs[0])})
		if err != nil {
			return "", err
		}
		return parseChain(t, chain)[0].URIs[0].String(), nil
	}

	alpha := local.Token(t, "alpha", "app", aud, time.Hour)
	beta := east.Token(t, "beta", "app", aud, time.Hour)
	webLocal := local.Token(t, "shop", "web", aud, time.Hour)
	webEast := east.Token(t, "shop", "web", aud, time.Hour)
	const td = "spiffe://cluster.local"
	tests := []struct {
		name     string
		token    string
		clusters []string
		want     string // SPIFFE ID issued, or "" when refused
		contains string // in the refusal
	}{
		{name: "local token, no ClusterID", token: alpha, want: td + "/ns/alpha/sa/app"},
		{name: "local token, local ClusterID", token: alpha, clusters: []string{"Kubernetes"}, want: td + "/ns/alpha/sa/app"},
		{name: "remote token, remote ClusterID", token: beta, clusters: []string{"east"}, want: td + "/ns/beta/sa/app"},
		{name: "local token under the remote ClusterID", token: alpha, clusters: []string{"east"}, contains: `cluster "east"`},
		{name: "remote token, no ClusterID", token: beta},
		{name: "remote token under the local ClusterID", token: beta, clusters: []string{"Kubernetes"}},
		{name: "same account name, remote cluster", token: webEast, clusters: []string{"east"}, want: td + "/ns/shop/sa/web"},
		{name: "same account name, local token under the remote ClusterID", token: webLocal, clusters: []string{"east"}},
		{name: "same account name, remote token as local", token: webEast},
		{name: "unknown ClusterID", token: alpha, clusters: []string{"west"}, contains: `ClusterID "west" is not a cluster this CA checks tokens of`},
		{name: "two ClusterIDs", token: alpha, clusters: []string{"Kubernetes", "east"}, contains: "2 ClusterID values"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := call(tt.token, tt.clusters...)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want an SVID for %s", got, err, tt.want)
				}
				return
			}
			if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), tt.contains) {
				t.Fatalf("got %q, %v; want Unauthenticated with %q", got, err, tt.contains)
			}
		})
	}

	m := ca.Metrics(t)
	if n := m.Value("castellan_ca_auth_failures_total", "reason", "unknown_cluster"); n != 2 {
		t.Errorf("castellan_ca_auth_failures_total{reason=unknown_cluster} = %v, want 2\n%s", n, m)
	}
	// Each cluster's tokens went through that cluster's own checks.
	for _, cluster := range []string{"Kubernetes", "east"} {
		if n := m.Value("castellan_authn_token_checks_total", "cluster", cluster); n == 0 {
			t.Errorf("no token checks counted for cluster %s\n%s", cluster, m)
		}
		if n := m.Value("castellan_authn_cache_total", "cluster", cluster); n == 0 {
			t.Errorf("no cache lookups counted for cluster %s\n%s", cluster, m)
		}
	}
	// Istio's names move with Castellan's.
	for istio, castellan := range map[string]string{
		"citadel_server_csr_count":                    "castellan_ca_csr_received_total",
		"citadel_server_success_cert_issuance_count":  "castellan_ca_certificates_issued_total",
		"citadel_server_authentication_failure_count": "castellan_ca_auth_failures_total",
	} {
		if _, ok := m[istio]; !ok {
			t.Errorf("%s not exported with --istio-compatible-metrics", istio)
		}
		if m.Value(istio) != m.Value(castellan) {
			t.Errorf("%s = %v, %s = %v; want equal", istio, m.Value(istio), castellan, m.Value(castellan))
		}
	}
	if m.Value("citadel_server_success_cert_issuance_count") != 4 {
		t.Errorf("citadel_server_success_cert_issuance_count = %v, want 4", m.Value("citadel_server_success_cert_issuance_count"))
	}

	// The remote cluster's watch revokes its own account's token, cached
	// as it is; the local cluster is not affected.
	east.DeleteServiceAccount(t, "beta", "app")
	harness.WaitForNil(t, 30*time.Second, func() error {
		if _, err := call(beta, "east"); status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("beta/app was deleted in cluster east, but its token still gives %v", err)
		}
		return nil
	})
	if _, err := call(alpha); err != nil {
		t.Fatalf("local token after a remote deletion: %v", err)
	}
}

// TestMultiClusterRemoteDown: a remote cluster whose API server cannot be
// reached holds up neither the CA's start nor the other clusters' tokens;
// its own requests are refused as Unavailable (retry later), not as
// unauthenticated.
func TestMultiClusterRemoteDown(t *testing.T) {
	local := harness.StartAPIServer(t)
	local.CreateServiceAccount(t, "alpha", "app")
	dead := filepath.Join(t.TempDir(), "dead.kubeconfig")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster:
    server: https://127.0.0.1:%d
    insecure-skip-tls-verify: true
users:
- name: dead
  user:
    token: nobody
contexts:
- name: dead
  context: {cluster: dead, user: dead}
current-context: dead
`, harness.FreePort(t))
	if err := os.WriteFile(dead, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := harness.StartCAProcess(t, "--kubeconfig", local.Kubeconfig, "--remote-cluster", "dead="+dead)
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: ca.Roots(t), ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	csrs, err := loadgen.MakeCSRs(1)
	if err != nil {
		t.Fatal(err)
	}
	alpha := local.Token(t, "alpha", "app", []string{"istio-ca"}, time.Hour)
	for _, tt := range []struct {
		cluster string
		code    codes.Code
	}{
		{cluster: "Kubernetes", code: codes.OK},
		{cluster: "dead", code: codes.Unavailable},
		{cluster: "Kubernetes", code: codes.OK},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "ClusterID", tt.cluster)
		_, err := client.CreateCertificateRequest(ctx, alpha, &pb.IstioCertificateRequest{Csr: string(csrs[0])})
		cancel()
		if status.Code(err) != tt.code {
			t.Fatalf("ClusterID %s: %v, want %s", tt.cluster, err, tt.code)
		}
		if err != nil {
			t.Logf("ClusterID %s: %v", tt.cluster, err)
		}
	}
}
