package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"sync"
	"testing"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestConcurrentCallsOnOneConnection: the responses of many calls in
// flight on one connection, gathered into shared writes, each reach their
// own caller: every certificate carries the key of its caller's CSR, and
// every refusal reaches the caller that was refused.
func TestConcurrentCallsOnOneConnection(t *testing.T) {
	s := start(t)
	const calls = 96
	csrs := make([][]byte, calls)
	for i := range calls {
		csrs[i] = csrFor(t, "")
	}
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			token := "good"
			if i%8 == 0 {
				token = "stranger"
			}
			chain, err := s.client.CreateCertificate(context.Background(), token, csrs[i], 0)
			if token == "stranger" {
				if status.Code(err) != codes.Unauthenticated {
					t.Errorf("call %d with a bad token: %v, want Unauthenticated", i, err)
				}
				return
			}
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			leaf, err := pemfile.ParseCertificates([]byte(chain[0]))
			if err != nil {
				t.Errorf("call %d: leaf: %v", i, err)
				return
			}
			block, _ := pem.Decode(csrs[i])
			csr, err := x509.ParseCertificateRequest(block.Bytes)
			if err != nil {
				t.Errorf("call %d: CSR: %v", i, err)
				return
			}
			if !pemfile.SameKey(leaf[0].PublicKey, csr.PublicKey) {
				t.Errorf("call %d got a certificate for another caller's key", i)
			}
		})
	}
	wg.Wait()
}
