package kms_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/kms/vault"
	"github.com/prometheus/client_golang/prometheus"
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
	v := startVault(b)
	v.enablePKI(b)
	v.enableTransit(b)
	roleID, secretID := v.appRole(b, 0)
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
		{name: "vault-transit-batched", setup: caSetup{keyURI: "vault-transit://transit/castellan-bench", vaultAddr: v.addr, vaultAuth: appRole, transitBatch: 32}},
		{name: "vault-transit-unbatched", setup: caSetup{keyURI: "vault-transit://transit/castellan-bench", vaultAddr: v.addr, vaultAuth: appRole, transitBatch: 1}},
		{name: "vault-pki-upstream-software-intermediate", setup: caSetup{keyURI: "file://" + filepath.Join(b.TempDir(), "inter-key.pem"), vaultAddr: v.addr, vaultAuth: appRole, upstream: true}},
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
			if res.Errors > 0 {
				b.Fatalf("%d of %d requests failed: %v", res.Errors, res.Requests, res.ErrorsByCode)
			}
			b.ReportMetric(res.Rate(), "csr/s")
			b.ReportMetric(float64(res.P50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(res.P99.Microseconds())/1000, "p99-ms")
		})
	}
}

// benchAuth returns a harness option that authenticates with offline JWTs
// (cached), and n tokens for distinct service accounts.
func benchAuth(b *testing.B, n int) (harness.CAOption, []string) {
	m, err := authn.NewMinter("https://bench.castellan.test")
	if err != nil {
		b.Fatal(err)
	}
	jwks := filepath.Join(b.TempDir(), "jwks.json")
	if err := m.WriteJWKS(jwks); err != nil {
		b.Fatal(err)
	}
	tokens := make([]string, n)
	for i := range tokens {
		if tokens[i], err = m.Mint("bench", "sa-"+strconv.Itoa(i), []string{harness.DefaultAudience}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	opt := harness.WithAuthenticator(func(t testing.TB, reg prometheus.Registerer) authn.Authenticator {
		j, err := authn.NewJWT(context.Background(), authn.JWTConfig{Issuer: m.Issuer(), Audiences: []string{harness.DefaultAudience}, JWKSFile: jwks})
		if err != nil {
			t.Fatal(fmt.Errorf("bench: %w", err))
		}
		cache, err := authn.NewCache(j, authn.CacheConfig{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		return cache
	})
	return opt, tokens
}
