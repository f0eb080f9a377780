package inspect

import (
	"crypto"
	"crypto/x509"
	"time"
)

// Input is the material to inspect, as a source delivered it.
type Input struct {
	// Source says where the chain came from ("file:cert.pem"); it is
	// copied to Report.Source.
	Source string
	// Chain is the certificate chain, leaf first, in the order the source
	// presented it. It is not reordered.
	Chain []*x509.Certificate
	// Bundle holds the trust anchors to verify Chain against; empty when
	// none is known, in which case the chain is not verified.
	Bundle []*x509.Certificate
	// BundleSource says where Bundle came from.
	BundleSource string
	// PublicKey is the public half of the private key that goes with the
	// leaf, when one was delivered or given; nil otherwise. Only the public
	// half is kept, so that a private key never reaches a report.
	PublicKey crypto.PublicKey
	// KeySource says where the private key came from.
	KeySource string
	// Notes are facts about the source worth reporting (Report.Notes).
	Notes []string
	// Rejections say why the standard client of the source (Envoy for SDS,
	// go-spiffe for the Workload API) refuses this material; each becomes a
	// source-rejected error.
	Rejections []string
}

// Options tunes Analyze. The zero value is ready to use.
type Options struct {
	// Now is the time against which validity is judged; the zero value
	// means time.Now().
	Now time.Time
	// LowLifetime is the share of its lifetime under which a certificate
	// draws a low-lifetime warning; the zero value means 0.2 (20%).
	LowLifetime float64
}

func (o Options) now() time.Time {
	if o.Now.IsZero() {
		return time.Now().UTC()
	}
	return o.Now.UTC()
}

func (o Options) lowLifetime() float64 {
	if o.LowLifetime <= 0 || o.LowLifetime >= 1 {
		return 0.2
	}
	return o.LowLifetime
}
