//go:build cgo && !nopkcs11

package kms

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"log/slog"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSign measures one P-256 signature by each local key store, from
// parallel goroutines as the CA signs. Vault Transit is measured end to
// end by BenchmarkCASigners in integration/kms.
func BenchmarkSign(b *testing.B) {
	cases := []struct {
		name string
		uri  func(b *testing.B) string
	}{
		{name: "file", uri: func(b *testing.B) string { return "file://" + filepath.Join(b.TempDir(), "k.pem") }},
		{name: "pkcs11-softhsm2", uri: func(b *testing.B) string {
			softHSMToken(b, "castellan")
			return "pkcs11:token=castellan;object=bench?module-path=" + softHSMModule + "&pin-value=1234"
		}},
	}
	digest := sha256.Sum256([]byte("tbs"))
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			key, _, err := OpenOrCreate(context.Background(), tc.uri(b), ECDSAP256, Config{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer key.Close()
			signers := []struct {
				name string
				s    crypto.Signer
			}{{"as-opened", key}}
			if v, ok := key.Signer.(*verifiedSigner); ok {
				// What the check after signing costs: the same key without it.
				signers = append(signers, struct {
					name string
					s    crypto.Signer
				}{"unchecked", v.Signer})
			}
			for _, sg := range signers {
				b.Run(sg.name, func(b *testing.B) {
					c0 := processCPU()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if _, err := sg.s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
								b.Error(err)
								return
							}
						}
					})
					b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
				})
			}
		})
	}
}

// processCPU is the CPU time of this process (the key store's module
// included), which a loaded machine does not inflate as it does wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
