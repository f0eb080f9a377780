package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"sync"
	"testing"

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
	keys := make([]*ecdsa.PrivateKey, calls)
	csrs := make([][]byte, calls)
	for i := range calls {
		keys[i], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, keys[i])
		if err != nil {
			t.Fatal(err)
		}
		csrs[i] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
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
			block, _ := pem.Decode([]byte(chain[0]))
			if block == nil {
				t.Errorf("call %d: leaf is not PEM", i)
				return
			}
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			if !keys[i].PublicKey.Equal(leaf.PublicKey) {
				t.Errorf("call %d got a certificate for another caller's key", i)
			}
		})
	}
	wg.Wait()
}
