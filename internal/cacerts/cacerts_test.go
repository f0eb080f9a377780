package cacerts_test

import (
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/internal/cacerts"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestDecode(t *testing.T) {
	p := testpki.New(t)
	other := testpki.New(t)
	root, inter := testpki.CertPEM(p.Root), testpki.CertPEM(p.Intermediate)
	interKey, rootKey := testpki.KeyPEM(t, p.IntermediateKey), testpki.KeyPEM(t, p.RootKey)
	tests := []struct {
		name      string
		data      map[string][]byte
		withKey   bool
		wantChain int
		wantRoots int
		wantErr   string
	}{
		{name: "intermediate", withKey: true, wantChain: 1, wantRoots: 1, data: map[string][]byte{
			cacerts.CACertFile: inter, cacerts.CAKeyFile: interKey, cacerts.CertChainFile: root, cacerts.RootCertFile: root}},
		{name: "self-signed root, chain and bundle empty", withKey: true, wantRoots: 1, data: map[string][]byte{
			cacerts.CACertFile: root, cacerts.CAKeyFile: rootKey, cacerts.CertChainFile: {}}},
		{name: "key elsewhere", wantChain: 1, wantRoots: 1, data: map[string][]byte{
			cacerts.CACertFile: inter, cacerts.CertChainFile: root, cacerts.RootCertFile: root}},
		{name: "bundle of two roots", withKey: true, wantRoots: 2, data: map[string][]byte{
			cacerts.CACertFile: root, cacerts.CAKeyFile: rootKey, cacerts.RootCertFile: testpki.CertPEM(p.Root, other.Root)}},
		{name: "no cert", withKey: true, data: map[string][]byte{cacerts.CAKeyFile: rootKey}, wantErr: "no ca-cert.pem"},
		{name: "no key", withKey: true, data: map[string][]byte{cacerts.CACertFile: root}, wantErr: "no ca-key.pem"},
		{name: "bad key", withKey: true, data: map[string][]byte{cacerts.CACertFile: root, cacerts.CAKeyFile: []byte("junk")}, wantErr: "ca-key.pem:"},
		{name: "bad chain", data: map[string][]byte{cacerts.CACertFile: root, cacerts.CertChainFile: []byte("junk")}, wantErr: "cert-chain.pem:"},
		{name: "bad bundle", data: map[string][]byte{cacerts.CACertFile: root, cacerts.RootCertFile: interKey}, wantErr: "root-cert.pem:"},
		{name: "intermediate without bundle", data: map[string][]byte{cacerts.CACertFile: inter}, wantErr: "no root-cert.pem, and ca-cert.pem is not self-signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := cacerts.Decode(tt.data, tt.withKey)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Chain) != tt.wantChain || len(s.Roots) != tt.wantRoots {
				t.Fatalf("chain %d, roots %d; want %d, %d", len(s.Chain), len(s.Roots), tt.wantChain, tt.wantRoots)
			}
			if (s.Key != nil) != tt.withKey {
				t.Fatalf("key = %v, withKey %v", s.Key, tt.withKey)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	p := testpki.New(f)
	f.Add(testpki.CertPEM(p.Root), testpki.KeyPEM(f, p.RootKey), []byte{}, []byte{})
	f.Add(testpki.CertPEM(p.Intermediate), testpki.KeyPEM(f, p.IntermediateKey), testpki.CertPEM(p.Root), testpki.CertPEM(p.Root))
	f.Fuzz(func(t *testing.T, cert, key, chain, roots []byte) {
		s, err := cacerts.Decode(map[string][]byte{
			cacerts.CACertFile: cert, cacerts.CAKeyFile: key, cacerts.CertChainFile: chain, cacerts.RootCertFile: roots,
		}, true)
		if err == nil && (s.Cert == nil || s.Key == nil || len(s.Roots) == 0) {
			t.Fatalf("decoded an incomplete set: %+v", s)
		}
	})
}
