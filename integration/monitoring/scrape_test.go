package monitoring

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// TestMonitoredMetricsAreServed runs the three kinds of CA process the
// alerts cover (CA material in a Kubernetes Secret, an intermediate from
// Vault's PKI engine) and a node agent, makes each do what creates its
// labelled series (an issuance, a refusal of each kind, a TokenReview, an
// SDS and a Workload API stream), scrapes them, and checks that every
// metric the alerts and the dashboard name is served.
func TestMonitoredMetricsAreServed(t *testing.T) {
	want := readLines(t, "testdata/metrics.txt")
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	for _, ns := range []string{"castellan-system", "shop"} {
		if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	api.CreateServiceAccount(t, "shop", "checkout")

	// The CA with its material in a Secret; every token is reviewed.
	ca := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--material=kubernetes",
		"--namespace=castellan-system", "--pod-name=castellan-ca-0", "--offline-bound-tokens=false")
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, httpGet(t, "http://"+ca.HTTPAddr+"/bundle"), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(httpGet(t, "http://"+ca.HTTPAddr+"/bundle")) {
		t.Fatal("the CA's /bundle holds no certificate")
	}
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: roots, ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	token := api.Token(t, "shop", "checkout", []string{"istio-ca"}, time.Hour)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := client.CreateCertificate(rctx, token, csr(t, nil), 0); err != nil {
		t.Fatalf("issuance: %v", err)
	}
	if _, err := client.CreateCertificate(rctx, "not-a-token", csr(t, nil), 0); err == nil {
		t.Fatal("a junk token was accepted")
	}
	if _, err := client.CreateCertificate(rctx, token, csr(t, []string{"checkout.shop.svc"}), 0); err == nil {
		t.Fatal("a CSR with a DNS name was signed")
	}

	// The agent, serving one SDS and one Workload API stream.
	dir, err := os.MkdirTemp("", "mon") // short: Unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	agentHTTP := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
	sdsSocket, wlSocket := filepath.Join(dir, "sds"), filepath.Join(dir, "wl")
	startAgent(t, "--ca-addr="+ca.GRPCAddr, "--ca-server-name="+ca.ServerName, "--root-cert="+rootFile,
		"--token-file="+tokenFile, "--sds-socket="+sdsSocket, "--workload-api-socket="+wlSocket,
		"--http-addr="+agentHTTP)
	harness.WaitFor(t, time.Minute, "the agent's SVID", func() bool {
		resp, err := http.Get("http://" + agentHTTP + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return harness.ScrapeMetrics(t, "http://"+agentHTTP+"/metrics").Value("castellan_agent_identities") == 1
	})
	if _, err := sdsclient.Fetch(rctx, sdsSocket, "default"); err != nil {
		t.Fatalf("SDS: %v", err)
	}
	if _, err := workloadapi.FetchX509SVID(rctx, workloadapi.WithAddr("unix://"+wlSocket)); err != nil {
		t.Fatalf("Workload API: %v", err)
	}

	// The CA whose intermediate Vault's PKI engine signs.
	vault := harness.StartVault(t)
	vault.EnablePKI(t)
	vaultToken := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(vaultToken, []byte(vault.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	upstream := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--upstream=vault",
		"--vault-addr="+vault.Addr, "--vault-token-file="+vaultToken)

	served := map[string]bool{}
	for _, m := range []harness.Metrics{ca.Metrics(t), upstream.Metrics(t), harness.ScrapeMetrics(t, "http://"+agentHTTP+"/metrics")} {
		for name, mf := range m {
			for _, s := range seriesNames(name, mf) {
				served[s] = true
			}
		}
	}
	for _, name := range want {
		if !served[name] {
			t.Errorf("%s is named by deploy/monitoring but served by no CA or agent", name)
		}
	}
}

// seriesNames returns the names of the series a metric family is exposed
// as: a histogram's _bucket, _sum and _count, a summary's _sum and _count.
func seriesNames(name string, mf *dto.MetricFamily) []string {
	switch mf.GetType() {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return []string{name, name + "_bucket", name + "_sum", name + "_count"}
	case dto.MetricType_SUMMARY:
		return []string{name, name + "_sum", name + "_count"}
	}
	return []string{name}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))
}

func httpGet(t *testing.T, u string) []byte {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
	}
	return body
}

// csr returns a PEM CSR for a new P-256 key, with dnsNames if any.
func csr(t *testing.T, dnsNames []string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: dnsNames}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// startAgent runs castellan-agent, built as the image builds it, until the
// test ends.
func startAgent(t *testing.T, args ...string) {
	t.Helper()
	var logs strings.Builder
	cmd := exec.Command(harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace"), args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
}
