package inspect_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// TestAgentSockets inspects the SVID a real node agent obtained from the
// real CA (authenticated by TokenReview against the in-process API server),
// over the agent's SDS socket and its SPIFFE Workload API socket.
func TestAgentSockets(t *testing.T) {
	api := harness.StartAPIServer(t)
	ca := harness.StartCA(t, api)
	api.CreateServiceAccount(t, "default", "sleep")
	dir := t.TempDir()
	tokenFile := testpki.WriteFile(t, dir, "token", []byte(api.Token(t, "default", "sleep", []string{harness.DefaultAudience}, time.Hour)))
	for _, keyType := range []agent.KeyType{agent.KeyECDSAP256, agent.KeyRSA2048} {
		t.Run(string(keyType), func(t *testing.T) {
			sdsSock := filepath.Join(dir, string(keyType)+"-sds.sock")
			wlSock := filepath.Join(dir, string(keyType)+"-wl.sock")
			ctx, cancel := context.WithCancel(context.Background())
			a, err := agent.New(agent.Config{
				CAAddr: ca.GRPCAddr, CAServerName: ca.ServerName,
				RootCertFile: ca.RootFile, TokenFile: tokenFile, KeyType: keyType,
				SDSSocket: sdsSock, WorkloadAPISocket: wlSock, HTTPAddr: agent.Disabled,
				InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("agent: %v", err)
				}
			})
			checkAgent(t, ca, "unix://"+sdsSock, "unix://"+wlSock, keyType)
		})
	}
}

func checkAgent(t *testing.T, ca *harness.CA, sdsAddr, wlAddr string, keyType agent.KeyType) {
	t.Helper()
	wantID := "spiffe://" + ca.TrustDomain + "/ns/default/sa/sleep"
	wantKey := map[agent.KeyType]string{agent.KeyECDSAP256: "ECDSA P-256", agent.KeyRSA2048: "RSA 2048"}[keyType]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// SDS waits for the agent's first SVID: the server sends nothing
	// until it has one.
	sdsIn, err := source.SDS(ctx, sdsAddr)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, in inspect.Input, wantBundle string) {
		t.Helper()
		r := inspect.Analyze(in, inspect.Options{})
		switch {
		case r.Status != inspect.StatusValid:
			t.Errorf("%s: status %s, findings %+v", name, r.Status, r.Findings)
		case r.Verification.SVID.SPIFFEID != wantID || !r.Verification.SVID.Conformant:
			t.Errorf("%s: svid %+v, want %s", name, r.Verification.SVID, wantID)
		case !r.Verification.Chain.Verified || r.Bundle == nil || r.Bundle.Source != wantBundle:
			t.Errorf("%s: chain %+v, bundle %+v", name, r.Verification.Chain, r.Bundle)
		case !r.Verification.Key.Checked || !r.Verification.Key.Matches:
			t.Errorf("%s: key %+v", name, r.Verification.Key)
		case r.Certificates[0].PublicKey.String() != wantKey:
			t.Errorf("%s: leaf key %s, want %s", name, r.Certificates[0].PublicKey, wantKey)
		}
		if r.Bundle != nil && !strings.Contains(string(ca.RootPEM), strings.TrimSpace(string(pemOfRef(in, 0)))) {
			t.Errorf("%s: the bundle is not the CA's root", name)
		}
	}
	check("SDS", sdsIn, "sds:ROOTCA")

	wlIn, err := source.WorkloadAPI(ctx, wlAddr)
	if err != nil {
		t.Fatal(err)
	}
	check("Workload API", wlIn, "workload-api:"+wlAddr+" bundle for "+ca.TrustDomain)
	if !sdsIn.Chain[0].Equal(wlIn.Chain[0]) {
		t.Error("SDS and the Workload API serve different SVIDs")
	}

	// The command against the same sockets, and with the bundle from the
	// CA's URL instead of the socket's.
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"sds", []string{"--sds", sdsAddr}},
		{"workload api", []string{"--workload-api", wlAddr, "--short"}},
		{"sds with the CA's bundle URL", []string{"--sds", sdsAddr, "--bundle", "http://" + ca.HTTPAddr + "/bundle"}},
		{"workload api with a bundle file", []string{"--workload-api", wlAddr, "--bundle", ca.RootFile}},
	} {
		t.Run("cli "+tt.name, func(t *testing.T) {
			res := runCLI(t, nil, nil, append([]string{"cert", "inspect"}, tt.args...)...)
			if res.code != 0 || !strings.Contains(res.stdout, wantID) {
				t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
			}
		})
	}
	res := runCLI(t, nil, nil, "cert", "inspect", "--sds", sdsAddr, "-o", "json")
	var r inspect.Report
	if err := json.Unmarshal([]byte(res.stdout), &r); err != nil || res.code != 0 {
		t.Fatalf("exit %d, %v\n%s\n%s", res.code, err, res.stdout, res.stderr)
	}
	if r.Verification.Key.Source != "sds:default" || r.Bundle.Source != "sds:ROOTCA" || strings.Contains(res.stdout, "PRIVATE KEY") {
		t.Errorf("report %+v", r)
	}
}

// pemOfRef returns the PEM of the input's bundle certificate i.
func pemOfRef(in inspect.Input, i int) []byte {
	if i >= len(in.Bundle) {
		return nil
	}
	return testpki.CertPEM(in.Bundle[i])
}
