package pemder_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/pemder"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestParseCertificates(t *testing.T) {
	p := testpki.New(t)
	chainPEM := testpki.CertPEM(p.Leaf, p.Intermediate)
	withJunk := append(append([]byte("subject=CN = web\nissuer=CN = intermediate\n"), testpki.CertPEM(p.Leaf)...), append([]byte("\n# comment\n"), testpki.CertPEM(p.Intermediate)...)...)
	withKey := append(testpki.CertPEM(p.Leaf), testpki.KeyPEM(t, p.LeafKey)...)
	der := append(append([]byte(nil), p.Leaf.Raw...), p.Intermediate.Raw...)
	broken := append(testpki.CertPEM(p.Leaf), []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")...)
	line2 := bytes.Count(testpki.CertPEM(p.Leaf), []byte("\n")) + 1
	badDER := append(testpki.CertPEM(p.Leaf), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}})...)

	tests := []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr string
	}{
		{name: "PEM chain", data: chainPEM, want: []*x509.Certificate{p.Leaf, p.Intermediate}},
		{name: "PEM with text between blocks", data: withJunk, want: []*x509.Certificate{p.Leaf, p.Intermediate}},
		{name: "PEM with CRLF line ends", data: bytes.ReplaceAll(chainPEM, []byte("\n"), []byte("\r\n")), want: []*x509.Certificate{p.Leaf, p.Intermediate}},
		{name: "PEM with a private key", data: withKey, want: []*x509.Certificate{p.Leaf}},
		{name: "DER", data: p.Leaf.Raw, want: []*x509.Certificate{p.Leaf}},
		{name: "concatenated DER", data: der, want: []*x509.Certificate{p.Leaf, p.Intermediate}},
		{name: "base64 of PEM, as kubectl prints it", data: []byte(base64.StdEncoding.EncodeToString(chainPEM) + "\n"), want: []*x509.Certificate{p.Leaf, p.Intermediate}},
		{name: "base64 of DER", data: []byte(base64.StdEncoding.EncodeToString(p.Leaf.Raw)), want: []*x509.Certificate{p.Leaf}},
		{name: "empty", data: nil, wantErr: "no data"},
		{name: "whitespace", data: []byte(" \n\t"), wantErr: "no data"},
		{name: "garbage", data: []byte("hello, world"), wantErr: "not PEM, and not DER"},
		{name: "only a key", data: testpki.KeyPEM(t, p.LeafKey), wantErr: "no CERTIFICATE PEM block (found PRIVATE KEY)"},
		{name: "malformed second block", data: broken, wantErr: fmt.Sprintf("PEM block 2 at line %d is malformed", line2)},
		{name: "second block is not a certificate", data: badDER, wantErr: fmt.Sprintf("PEM block 2 (CERTIFICATE) at line %d", line2)},
		{name: "unterminated block", data: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n"), wantErr: "PEM block 1 at line 1 is malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pemder.ParseCertificates(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "pemder: ") {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d certificates, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("certificate %d differs", i)
				}
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	p := testpki.New(t)
	ec := p.LeafKey
	sec1, _ := x509.MarshalECPrivateKey(ec)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ec)
	_, edPriv, _ := ed25519.GenerateKey(nil)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PrivateKey(rsaKey)

	tests := []struct {
		name    string
		data    []byte
		want    any
		wantErr string
	}{
		{name: "PKCS #8 PEM", data: testpki.KeyPEM(t, ec), want: ec.Public()},
		{name: "SEC 1 PEM", data: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), want: ec.Public()},
		{name: "PKCS #1 PEM", data: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: pkcs1}), want: rsaKey.Public()},
		{name: "Ed25519 PEM", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), want: edPriv.Public()},
		{name: "key after a certificate", data: append(testpki.CertPEM(p.Leaf), testpki.KeyPEM(t, ec)...), want: ec.Public()},
		{name: "PKCS #8 DER", data: pkcs8, want: ec.Public()},
		{name: "SEC 1 DER", data: sec1, want: ec.Public()},
		{name: "PKCS #1 DER", data: pkcs1, want: rsaKey.Public()},
		{name: "base64 of PEM", data: []byte(base64.StdEncoding.EncodeToString(testpki.KeyPEM(t, ec))), want: ec.Public()},
		{name: "no key", data: testpki.CertPEM(p.Leaf), wantErr: "no private key PEM block"},
		{name: "encrypted", data: pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: pkcs8}), wantErr: "encrypted private key"},
		{name: "legacy encrypted", data: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: pkcs1}), wantErr: "encrypted private key"},
		{name: "corrupt key", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), wantErr: "PEM block 1 (PRIVATE KEY) at line 1"},
		{name: "garbage", data: []byte("nope"), wantErr: "parsing private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pemder.ParseKey(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.want) {
				t.Error("public key differs")
			}
		})
	}
	if _, err := pemder.ParseKey(testpki.CertPEM(p.Leaf)); !errors.Is(err, pemder.ErrNoKey) {
		t.Errorf("err = %v, want ErrNoKey", err)
	}
}

// FuzzParseCertificates feeds arbitrary bytes through the whole file path:
// parsing as PEM, DER or base64, then analysing and rendering what parsed.
// It must never panic.
func FuzzParseCertificates(f *testing.F) {
	p := testpki.New(f)
	f.Add(testpki.CertPEM(p.Leaf, p.Intermediate))
	f.Add(p.Leaf.Raw)
	f.Add(append(append([]byte(nil), p.Leaf.Raw...), p.Root.Raw...))
	f.Add([]byte(base64.StdEncoding.EncodeToString(testpki.CertPEM(p.Leaf))))
	f.Add(append(testpki.CertPEM(p.Leaf), testpki.KeyPEM(f, p.LeafKey)...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte(""))
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := pemder.ParseCertificates(data)
		if err != nil {
			if len(certs) != 0 {
				t.Fatal("certificates returned with an error")
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("no certificate and no error")
		}
		in := inspect.Input{Source: "fuzz", Chain: certs, Bundle: certs[len(certs)-1:]}
		if pub, err := pemder.ParseKey(data); err == nil {
			in.PublicKey = pub
		}
		r := inspect.Analyze(in, inspect.Options{Now: now})
		if err := inspect.WriteText(io.Discard, r, inspect.TextOptions{Color: true}); err != nil {
			t.Fatal(err)
		}
		if err := inspect.WriteShort(io.Discard, r, inspect.TextOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := inspect.WriteJSON(io.Discard, r); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseKey feeds arbitrary bytes to the private key parser.
func FuzzParseKey(f *testing.F) {
	p := testpki.New(f)
	f.Add(testpki.KeyPEM(f, p.LeafKey))
	der, _ := x509.MarshalECPrivateKey(p.LeafKey)
	f.Add(der)
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := pemder.ParseKey(data)
		if (err == nil) != (pub != nil) {
			t.Fatalf("ParseKey = %v, %v", pub, err)
		}
	})
}

// bigPEM returns about size bytes of PEM: the leaf certificate repeated,
// each block preceded by a comment line, as a long bundle file would be.
func bigPEM(t testing.TB, size int) ([]byte, int) {
	p := testpki.New(t)
	block := append([]byte("# a bundle entry\n"), testpki.CertPEM(p.Leaf)...)
	n := size / len(block)
	return bytes.Repeat(block, n), n
}

// TestParseCertificatesInputCap parses an input at the inspect input cap
// (16 MiB, tens of thousands of blocks). Each block's line number used to
// be counted from the start of the input, which made this quadratic: over
// five minutes. The deadline is far above the linear cost (well under two
// seconds; see BenchmarkParseCertificatesInputCap) and far below the old one.
func TestParseCertificatesInputCap(t *testing.T) {
	data, n := bigPEM(t, 16<<20)
	done := make(chan error, 1)
	go func() {
		certs, err := pemder.ParseCertificates(data)
		if err == nil && len(certs) != n {
			err = fmt.Errorf("%d certificates, want %d", len(certs), n)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("parsing %d PEM blocks (16 MiB) took over a minute: not linear", n)
	}
	// The error for a large input without certificates stays short.
	keys := bytes.Repeat(testpki.KeyPEM(t, testpki.Key(t)), 10000)
	_, err := pemder.ParseCertificates(keys)
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "PRIVATE KEY ×10000") {
		t.Fatalf("error for 10,000 key blocks: %v", err)
	}
}

// BenchmarkParseCertificatesInputCap measures a 16 MiB PEM input.
func BenchmarkParseCertificatesInputCap(b *testing.B) {
	data, n := bigPEM(b, 16<<20)
	b.SetBytes(int64(len(data)))
	b.ReportMetric(float64(n), "blocks")
	for b.Loop() {
		if _, err := pemder.ParseCertificates(data); err != nil {
			b.Fatal(err)
		}
	}
}
