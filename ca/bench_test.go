package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/testpki"
)

// BenchmarkCryptoFloor is the least any issuance costs: one P-256
// signature verification (the CSR) and one P-256 signature (the leaf).
func BenchmarkCryptoFloor(b *testing.B) {
	key := testpki.Key(b)
	digest := sha256.Sum256([]byte("tbs"))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	b.ReportAllocs()
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
				b.Fatal("verify")
			}
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkIssue is Castellan's issuance path: parse and verify the CSR,
// validate it, build and sign the leaf, encode the chain.
func BenchmarkIssue(b *testing.B) {
	a := newTestAuthority(b, testpki.NewKey(b, testpki.P256))
	iss, _ := NewIssuer(StaticSource{a}, Config{})
	csrs := benchCSRs(b, 64)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := iss.Issue(ctx, Request{CSR: csrs[i%len(csrs)], ID: testID}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkIssueStdlib is the plain path for comparison: parse, check the
// signature, x509.CreateCertificate (which verifies its own signature).
func BenchmarkIssueStdlib(b *testing.B) {
	a := newTestAuthority(b, testpki.NewKey(b, testpki.P256))
	csrs := benchCSRs(b, 64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			blk, _ := pem.Decode(csrs[i%len(csrs)])
			csr, err := x509.ParseCertificateRequest(blk.Bytes)
			if err != nil || csr.CheckSignature() != nil {
				b.Fatal("csr")
			}
			serial, _ := randomSerial(rand.Reader)
			tmpl := &x509.Certificate{
				SerialNumber: serial, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
				KeyUsage:              x509.KeyUsageDigitalSignature,
				ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true, URIs: []*url.URL{testID.URL()},
			}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, csr.PublicKey, a.Signer); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// reportCPU reports the process's CPU time per operation (cpu-ns/op),
// which, unlike ns/op, a loaded machine does not inflate: compare
// BenchmarkIssue's to BenchmarkCryptoFloor's. Call as defer reportCPU(b)().
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c0 := cpu()
	return func() { b.ReportMetric(float64(cpu()-c0)/float64(b.N), "cpu-ns/op") }
}

func benchCSRs(b *testing.B, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = makeCSR(b, testpki.NewKey(b, testpki.P256), nil)
	}
	return out
}
