package kms_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/vault"
)

// BenchmarkCASigners measures the CSRs/s of the whole CA (gRPC over TLS,
// cached offline token check, CSR validation, signing, chain encoding)
// with its key in each key store, on this machine, in one run:
//
//	go test -run '^$' -bench CASigners -benchtime 1x ./kms/
//
// Each case runs loadgen for CASTELLAN_BENCH_DURATION (default 5s) with
// 32 requests in flight over 4 connections and reports csr/s and the p50
// and p99 latency. The upstream case is Castellan's chosen trade-off: the
// intermediate key in process, Vault only signing the intermediate.
func BenchmarkCASigners(b *testing.B) {
	v := harness.StartVault(b)
	v.EnablePKI(b)
	v.EnableTransit(b)
	roleID, secretID := v.AppRole(b, 0)
	appRole := vault.AppRoleAuth{RoleID: roleID, SecretID: secretID}
	softHSMToken(b, "castellan")
	dur := 5 * time.Second
	if s := os.Getenv("CASTELLAN_BENCH_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		dur = d
	}
	cases := []struct {
		name  string
		setup caSetup
	}{
		{name: "software", setup: caSetup{keyURI: "file://" + filepath.Join(b.TempDir(), "ca-key.pem")}},
		{name: "pkcs11-softhsm2", setup: caSetup{keyURI: softHSMURI("bench")}},
		{name: "vault-transit-batched", setup: caSetup{keyURI: "vault-transit://transit/castellan-bench", vaultAddr: v.Addr, vaultAuth: appRole, transitBatch: 32}},
		{name: "vault-transit-unbatched", setup: caSetup{keyURI: "vault-transit://transit/castellan-bench", vaultAddr: v.Addr, vaultAuth: appRole, transitBatch: 1}},
		{name: "vault-pki-upstream-software-intermediate", setup: caSetup{keyURI: "file://" + filepath.Join(b.TempDir(), "inter-key.pem"), vaultAddr: v.Addr, vaultAuth: appRole, upstream: true}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			authOpt, tokens := benchAuth(b, 64)
			c, _ := startKeyedCA(b, nil, tc.setup, authOpt)
			csrs, err := loadgen.MakeCSRs(256)
			if err != nil {
				b.Fatal(err)
			}
			cfg := loadgen.Config{
				Addr: c.GRPCAddr, ServerName: c.ServerName, Roots: c.Roots(b),
				Tokens: tokens, CSRs: csrs, Concurrency: 32, Connections: 4, Duration: dur,
			}
			b.ResetTimer()
			res, err := loadgen.Run(context.Background(), cfg)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			// loadgen's run deadline can fail the last in-flight calls
			// with DeadlineExceeded before its own context reports done;
			// those are not CA errors. Anything else is.
			if bad := res.Errors - res.ErrorsByCode["DeadlineExceeded"]; bad > 0 {
				b.Fatalf("%d of %d requests failed: %v", bad, res.Requests, res.ErrorsByCode)
			}
			b.ReportMetric(res.Rate(), "csr/s")
			b.ReportMetric(float64(res.P50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(res.P99.Microseconds())/1000, "p99-ms")
		})
	}
}

// benchAuth returns the option that makes the CA check offline JWTs
// (cached, as in production), and n tokens for distinct service accounts.
func benchAuth(b *testing.B, n int) (harness.CAOption, []string) {
	o := newOfflineIssuer(b)
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = o.mint(b, "bench", "sa-"+strconv.Itoa(i))
	}
	return o.option(), tokens
}
