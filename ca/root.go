package ca

import (
	"cmp"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// RootTemplate describes a self-signed root certificate.
type RootTemplate struct {
	// TrustDomain is named in the root's subject and URI SAN.
	TrustDomain spiffeid.TrustDomain
	// CommonName of the subject. Default: "Castellan Root CA".
	CommonName string
	// NotBefore is the start of validity. Default: now, less one minute.
	NotBefore time.Time
	// TTL is the root's lifetime. Default: 10 years.
	TTL time.Duration
	// Rand is the randomness for the serial and signature. Default:
	// crypto/rand.Reader.
	Rand io.Reader
}

// NewSelfSignedRoot creates a self-signed CA certificate for signer.
func NewSelfSignedRoot(signer crypto.Signer, t RootTemplate) (*x509.Certificate, error) {
	if t.TrustDomain.IsZero() {
		return nil, fmt.Errorf("ca: root needs a trust domain")
	}
	t.CommonName = cmp.Or(t.CommonName, "Castellan Root CA")
	if t.NotBefore.IsZero() {
		t.NotBefore = time.Now().Add(-time.Minute)
	}
	t.TTL = cmp.Or(t.TTL, 10*365*24*time.Hour)
	t.Rand = cmp.Or(t.Rand, rand.Reader)
	serial, err := randomSerial(t.Rand)
	if err != nil {
		return nil, fmt.Errorf("ca: could not generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{t.TrustDomain.Name()}, CommonName: t.CommonName},
		NotBefore:             t.NotBefore.UTC().Truncate(time.Second),
		NotAfter:              t.NotBefore.Add(t.TTL).UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{t.TrustDomain.ID().URL()},
	}
	der, err := x509.CreateCertificate(t.Rand, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: could not create root certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// IssueServingCertificate signs a TLS server certificate for the CA's own
// endpoint with dnsNames, for key pub, valid for ttl (capped by the chain).
// The certificate carries serverAuth only.
func IssueServingCertificate(a *Authority, pub crypto.PublicKey, dnsNames []string, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: could not generate serial: %w", err)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.NotAfter()) {
		notAfter = a.NotAfter()
	}
	cn := "castellan"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, pub, a.Signer)
	if err != nil {
		return nil, fmt.Errorf("ca: could not create serving certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}
