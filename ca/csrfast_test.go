package ca

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/testpki"
)

// referenceKey is the crypto/x509 path: ParseCSR, then ValidateCSR.
func referenceKey(in []byte, id spiffeid.ID) (csrKey, error) {
	csr, err := ParseCSR(in)
	if err != nil {
		return csrKey{}, err
	}
	if err := ValidateCSR(csr, id); err != nil {
		return csrKey{}, err
	}
	return keyOf(csr), nil
}

// checkFastMatchesReference fails t if parseCSRFast handles in and its
// outcome differs from crypto/x509's. It reports whether it was handled.
func checkFastMatchesReference(t *testing.T, in []byte, id spiffeid.ID) bool {
	t.Helper()
	key, handled, err := parseCSRFast(in, id)
	if !handled {
		return false
	}
	want, wantErr := referenceKey(in, id)
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("fast path error %v, crypto/x509 path error %v", err, wantErr)
	case err != nil && (err.Error() != wantErr.Error() || ReasonOf(err) != ReasonOf(wantErr)):
		t.Fatalf("fast path refuses with %q (%s), crypto/x509 path with %q (%s)", err, ReasonOf(err), wantErr, ReasonOf(wantErr))
	case !bytes.Equal(key.spki, want.spki) || key.rsa != want.rsa:
		t.Fatalf("fast path key %x (rsa %v), crypto/x509 path key %x (rsa %v)", key.spki, key.rsa, want.spki, want.rsa)
	}
	return true
}

func fastPathCSRs(t testing.TB) []struct {
	name string
	csr  []byte
	fast bool // the fast path must handle it
} {
	p256 := testpki.NewKey(t, testpki.P256)
	other := spiffeid.RequireFromPath(testTD, "/ns/prod/sa/admin")
	good := makeCSR(t, p256, nil)
	tampered := func() []byte {
		b, _ := pem.Decode(good)
		der := append([]byte(nil), b.Bytes...)
		der[len(der)-5] ^= 0xff
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}()
	critical := func() []byte {
		san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(testID.String())}})
		if err != nil {
			t.Fatal(err)
		}
		return makeCSR(t, p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}})
	}()
	newType := func() []byte {
		b, _ := pem.Decode(good)
		return pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: b.Bytes})
	}()
	return []struct {
		name string
		csr  []byte
		fast bool
	}{
		{"spiffe id", good, true},
		{"no san", makeCSR(t, p256, &x509.CertificateRequest{}), true},
		{"istio subject O empty", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}, URIs: []*url.URL{testID.URL()}}), true},
		{"printable cn", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sleep", OrganizationalUnit: []string{"x"}, Country: []string{"DE"}}}), true},
		{"utf8 cn", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "schlaf*ü"}}), true},
		{"critical san", critical, true},
		{"bad signature", tampered, true},
		{"other subject attribute", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{Locality: []string{"Berlin"}}}), false},
		{"new certificate request", newType, false},
		{"other spiffe id", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{other.URL()}}), false},
		{"two uris", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{testID.URL(), testID.URL()}}), false},
		{"dns san", makeCSR(t, p256, &x509.CertificateRequest{DNSNames: []string{"evil.example.com"}}), false},
		{"email san", makeCSR(t, p256, &x509.CertificateRequest{EmailAddresses: []string{"a@b.c"}}), false},
		{"p384", makeCSR(t, testpki.NewKey(t, testpki.P384), nil), false},
		{"rsa", makeCSR(t, testpki.NewKey(t, testpki.RSA2048), nil), false},
		{"p224", makeCSR(t, testpki.NewKey(t, testpki.P224), nil), false},
		{"ed25519", makeCSR(t, testpki.NewKey(t, testpki.Ed25519), nil), false},
		{"trailing data", append(append([]byte(nil), good...), "junk"...), false},
	}
}

// TestParseCSRFastMatchesStdlib: the fast path handles the CSRs workloads
// send and reaches crypto/x509's outcome on each; it leaves the rest to
// crypto/x509.
func TestParseCSRFastMatchesStdlib(t *testing.T) {
	for _, tc := range fastPathCSRs(t) {
		t.Run(tc.name, func(t *testing.T) {
			if handled := checkFastMatchesReference(t, tc.csr, testID); handled != tc.fast {
				t.Fatalf("handled by the fast path: %v, want %v", handled, tc.fast)
			}
		})
	}
}

// FuzzParseCSRFast holds the fast path to crypto/x509's outcome on
// whatever it handles.
func FuzzParseCSRFast(f *testing.F) {
	for _, tc := range fastPathCSRs(f) {
		if b, _ := pem.Decode(tc.csr); b != nil {
			f.Add(b.Bytes)
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		in := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		checkFastMatchesReference(t, in, testID)
	})
}

// FuzzDecodeCSRPEM holds the CSR's PEM decoding to encoding/pem's on
// whatever it accepts.
func FuzzDecodeCSRPEM(f *testing.F) {
	for _, tc := range fastPathCSRs(f) {
		f.Add(tc.csr)
	}
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\r\nMAA=\r\n-----END CERTIFICATE REQUEST-----\r\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n\nMA\nA=\n-----END CERTIFICATE REQUEST-----  \n"))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nA: b\n\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		der, ok := decodeCSRPEM(in)
		if !ok {
			return
		}
		block, rest := pem.Decode(in)
		switch {
		case block == nil:
			t.Fatalf("decoded %x; encoding/pem finds no block", der)
		case block.Type != "CERTIFICATE REQUEST" || len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0:
			t.Fatalf("decoded %x; encoding/pem finds type %q, headers %v, %d trailing bytes", der, block.Type, block.Headers, len(bytes.TrimSpace(rest)))
		case !bytes.Equal(der, block.Bytes):
			t.Fatalf("decoded %x; encoding/pem decodes %x", der, block.Bytes)
		}
	})
}

// TestDecodeCSRPEMAcceptsEncoders: every length of DER that encoding/pem
// writes, with LF or CRLF line ends, takes the fast decoder, which decodes
// it as encoding/pem does.
func TestDecodeCSRPEMAcceptsEncoders(t *testing.T) {
	for n := 1; n <= 200; n++ {
		der := make([]byte, n)
		for i := range der {
			der[i] = byte(i*7 + n)
		}
		lf := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		crlf := bytes.ReplaceAll(lf, []byte("\n"), []byte("\r\n"))
		for _, in := range [][]byte{lf, crlf} {
			got, ok := decodeCSRPEM(in)
			if !ok || !bytes.Equal(got, der) {
				t.Fatalf("%d bytes of DER, %q: ok=%v, decoded %x", n, in, ok, got)
			}
		}
	}
}
