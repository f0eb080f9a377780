package pemfile_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/smallfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestParseCertificates(t *testing.T) {
	p := testpki.New(t)
	keyPEM := testpki.KeyPEM(t, p.LeafKey)
	tests := []struct {
		name    string
		in      []byte
		want    int
		wantErr string
	}{
		{name: "chain", in: p.ChainPEM(), want: 2},
		{name: "one", in: testpki.CertPEM(p.Root), want: 1},
		{name: "surrounding space", in: append(append([]byte("\n\n"), p.ChainPEM()...), "\n \n"...), want: 2},
		{name: "empty", in: nil, wantErr: "no PEM certificate found"},
		{name: "a key pasted in", in: append(testpki.CertPEM(p.Root), keyPEM...), wantErr: `PEM block 1 has type "PRIVATE KEY", want CERTIFICATE`},
		{name: "trailing text", in: append(testpki.CertPEM(p.Root), "garbage"...), wantErr: "7 bytes of non-PEM data after certificate 1"},
		{name: "bad DER", in: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), wantErr: "PEM block 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := pemfile.ParseCertificates(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != tt.want {
				t.Fatalf("got %d certificates, want %d", len(certs), tt.want)
			}
		})
	}
}

func FuzzParseCertificates(f *testing.F) {
	p := testpki.New(f)
	f.Add(p.ChainPEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pemfile.ParseCertificates(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
		if err != nil {
			return
		}
		// What parses re-encodes to a set that parses to the same certificates.
		again, err := pemfile.ParseCertificates(pemfile.EncodeCertificates(certs))
		if err != nil || len(again) != len(certs) {
			t.Fatalf("re-encoded set: %d certificates, %v; want %d", len(again), err, len(certs))
		}
		for i := range certs {
			if !bytes.Equal(certs[i].Raw, again[i].Raw) {
				t.Fatalf("certificate %d changed on re-encoding", i)
			}
		}
	})
}

func TestIsSelfSigned(t *testing.T) {
	p := testpki.New(t)
	// A certificate that repeats its issuer's name as its subject, signed
	// by that issuer's key and not its own, is not self-signed.
	impostor := testpki.Create(t, &x509.Certificate{
		SerialNumber: big.NewInt(9),
		Subject:      p.Root.Subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}, p.Root, testpki.Key(t).Public(), p.RootKey)
	tests := []struct {
		name string
		cert *x509.Certificate
		want bool
	}{
		{name: "root", cert: p.Root, want: true},
		{name: "intermediate", cert: p.Intermediate},
		{name: "leaf", cert: p.Leaf},
		{name: "same name, other key", cert: impostor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pemfile.IsSelfSigned(tt.cert); got != tt.want {
				t.Fatalf("IsSelfSigned = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSameKey(t *testing.T) {
	p := testpki.New(t)
	tests := []struct {
		name string
		a, b any
		want bool
	}{
		{name: "leaf key and leaf", a: p.LeafKey.Public(), b: p.Leaf.PublicKey, want: true},
		{name: "leaf key and root", a: p.LeafKey.Public(), b: p.Root.PublicKey},
		{name: "nil", a: nil, b: p.Leaf.PublicKey},
		{name: "not a key", a: "key", b: p.Leaf.PublicKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pemfile.SameKey(tt.a, tt.b); got != tt.want {
				t.Fatalf("SameKey = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReadCertificatesNamesFile(t *testing.T) {
	dir := t.TempDir()
	path := testpki.WriteFile(t, dir, "root-cert.pem", []byte("not pem"))
	_, err := pemfile.ReadCertificates(path)
	if err == nil || !strings.Contains(err.Error(), filepath.Base(path)) {
		t.Fatalf("err = %v, want one naming %s", err, path)
	}
}

// TestReadRefusesHugeFiles: a certificate or key path that names a device
// or a huge file is refused at its limit, never read whole.
func TestReadRefusesHugeFiles(t *testing.T) {
	dir := t.TempDir()
	big := testpki.WriteFile(t, dir, "big.pem", bytes.Repeat([]byte("A"), pemfile.MaxCertificatesFile+1))
	read := map[string]func(string) error{
		"ReadCertificates": func(p string) error { _, err := pemfile.ReadCertificates(p); return err },
		"ReadPrivateKey":   func(p string) error { _, err := pemfile.ReadPrivateKey(p); return err },
	}
	for name, f := range read {
		for _, path := range []string{big, "/dev/zero"} {
			if err := f(path); !errors.Is(err, smallfile.ErrTooLarge) {
				t.Errorf("%s(%s) = %v, want ErrTooLarge", name, path, err)
			}
		}
	}
}
