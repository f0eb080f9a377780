package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures an Issuer. The zero value of each field selects the
// default noted beside it.
type Config struct {
	// DefaultTTL is the lifetime of an SVID when the request names none.
	// Default: 1h.
	DefaultTTL time.Duration
	// MaxTTL caps the lifetime a request may ask for. Default: 24h.
	MaxTTL time.Duration
	// ClockSkew backdates NotBefore so that peers whose clocks lag a little
	// accept a fresh SVID. Default: 1m.
	ClockSkew time.Duration
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Rand is the source of serial numbers and signing randomness.
	// Default: crypto/rand.Reader.
	Rand io.Reader
	// DNS lists the DNS SANs each service account may have, for serving
	// certificates such as istiod's. Default (nil): no DNS SAN to anyone.
	DNS *DNSProfile
}

func (c Config) withDefaults() Config {
	if c.DefaultTTL == 0 {
		c.DefaultTTL = time.Hour
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = 24 * time.Hour
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	return c
}

// Issuer signs X509-SVIDs with the Authority its Source holds.
type Issuer struct {
	src Source
	cfg Config
}

// NewIssuer returns an Issuer that signs with src.
func NewIssuer(src Source, cfg Config) (*Issuer, error) {
	cfg = cfg.withDefaults()
	switch {
	case src == nil:
		return nil, errors.New("ca: nil authority source")
	case cfg.DefaultTTL < 0 || cfg.MaxTTL < 0:
		return nil, errors.New("ca: TTLs must be positive")
	case cfg.DefaultTTL > cfg.MaxTTL:
		return nil, fmt.Errorf("ca: default TTL %s exceeds max TTL %s", cfg.DefaultTTL, cfg.MaxTTL)
	}
	return &Issuer{src: src, cfg: cfg}, nil
}

// Request asks for an SVID.
type Request struct {
	// CSR is the PEM certificate request.
	CSR []byte
	// ID is the caller's proven SPIFFE ID. The caller must have been
	// authenticated before the request reaches the Issuer.
	ID spiffeid.ID
	// TTL is the requested lifetime; zero means the default. It is clamped
	// to the maximum and to the signing chain's expiry.
	TTL time.Duration
	// Impersonated says that ID is not the caller's own but was granted to
	// a node agent for one of its pods. Such a request may not carry DNS
	// SANs: a DNS profile is for the service account itself.
	Impersonated bool
}

// SVID is an issued X509-SVID.
type SVID struct {
	// Certificate is the leaf, DER.
	Certificate []byte
	// ChainPEM holds the leaf, the intermediates and the root, in that order,
	// one PEM certificate per element (the order Istio's API returns).
	ChainPEM []string
	// NotAfter is the leaf's expiry.
	NotAfter time.Time
}

// Issue validates req's CSR against req.ID and signs an SVID for it.
// A request refused for what it asks is a *RejectError (see ReasonOf);
// a failure of the CA itself (the serial source, the signer, ctx ending
// while a remote signer works) is a plain error. Nothing is issued on an
// error path.
func (i *Issuer) Issue(ctx context.Context, req Request) (*SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The CSR every workload sends is parsed and verified without
	// crypto/x509's reflection; anything else, and every refusal but a bad
	// signature, takes crypto/x509's path, which is the reference.
	key, handled, err := parseCSRFast(req.CSR, req.ID)
	if !handled {
		csr, perr := ParseCSR(req.CSR)
		if perr != nil {
			return nil, perr
		}
		if req.Impersonated && len(csr.DNSNames) > 0 {
			return nil, reject(ReasonDNSNotAllowed, "CSR asks for DNS SAN %q on behalf of %s; DNS SANs are issued only to the service account itself, never through impersonation", truncateName(csr.DNSNames[0]), req.ID)
		}
		return i.IssueParsed(ctx, csr, req.ID, req.TTL)
	}
	if err != nil {
		return nil, err
	}
	return i.issue(ctx, key, req.ID, req.TTL)
}

// IssueParsed signs an SVID for a CSR already returned by ParseCSR. The
// CSR may ask for DNS SANs that Config.DNS allows id; the certificate then
// holds them beside the SPIFFE ID.
func (i *Issuer) IssueParsed(ctx context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) (*SVID, error) {
	if err := validateCSR(csr, id, i.cfg.DNS); err != nil {
		return nil, err
	}
	return i.issue(ctx, keyOf(csr), id, ttl, csr.DNSNames...)
}

// issue signs an SVID for id with key, once the CSR has been validated;
// dns are its allowed DNS SANs, if any.
func (i *Issuer) issue(ctx context.Context, key csrKey, id spiffeid.ID, ttl time.Duration, dns ...string) (*SVID, error) {
	a := i.src.Authority()
	if a == nil {
		return nil, reject(ReasonCAUnavailable, "no signing authority loaded")
	}
	notBefore, notAfter, err := i.validity(a, ttl)
	if err != nil {
		return nil, err
	}
	var serial [serialLen]byte
	if err := readSerial(i.cfg.Rand, &serial); err != nil {
		return nil, fmt.Errorf("ca: could not generate serial: %w", err)
	}
	tmpl := newLeafTemplate(key, id.String(), serial[:], notBefore, notAfter)
	tmpl.dns = dns
	der, err := i.sign(ctx, a, tmpl)
	if err != nil {
		return nil, err
	}
	chain := make([]string, 0, 1+len(a.chainPEM))
	chain = append(chain, certificatePEM(der))
	chain = append(chain, a.chainPEM...)
	return &SVID{Certificate: der, ChainPEM: chain, NotAfter: notAfter}, nil
}

// validity computes the leaf's NotBefore and NotAfter for the requested ttl.
func (i *Issuer) validity(a *Authority, ttl time.Duration) (time.Time, time.Time, error) {
	switch {
	case ttl < 0:
		return time.Time{}, time.Time{}, reject(ReasonInvalidTTL, "requested validity %s is negative", ttl)
	case ttl == 0:
		ttl = i.cfg.DefaultTTL
	case ttl > i.cfg.MaxTTL:
		ttl = i.cfg.MaxTTL
	}
	now := i.cfg.Now().UTC().Truncate(time.Second)
	notBefore := now.Add(-i.cfg.ClockSkew)
	notAfter := now.Add(ttl)
	if caEnd := a.NotAfter().UTC().Truncate(time.Second); notAfter.After(caEnd) {
		notAfter = caEnd
	}
	if !notAfter.After(now) {
		return time.Time{}, time.Time{}, reject(ReasonCAUnavailable, "the signing chain expired at %s", a.NotAfter().UTC().Format(time.RFC3339))
	}
	if caStart := a.Cert.NotBefore.UTC(); notBefore.Before(caStart) {
		notBefore = caStart
	}
	return notBefore, notAfter, nil
}

// sign encodes and signs tmpl with a. The TBSCertificate is built in the
// buffer that then holds the certificate, after room for its header.
func (i *Issuer) sign(ctx context.Context, a *Authority, tmpl *leafTemplate) ([]byte, error) {
	const room = 5 // the largest header appendHeader writes
	buf := make([]byte, room, room+tmpl.sizeHint(a))
	buf, err := tmpl.appendTBS(buf, a)
	if err != nil {
		return nil, fmt.Errorf("ca: could not encode certificate: %w", err)
	}
	tbs := buf[room:]
	var opts crypto.SignerOpts = crypto.Hash(0)
	digest := tbs
	var sum [sha512.Size]byte
	switch a.sig.hash {
	case 0:
	case crypto.SHA256:
		s := sha256.Sum256(tbs)
		digest, opts = append(sum[:0], s[:]...), crypto.SHA256
	default:
		h := a.sig.hash.New()
		h.Write(tbs)
		digest, opts = h.Sum(sum[:0]), a.sig.hash
	}
	var sig []byte
	if cs, ok := a.Signer.(ContextSigner); ok {
		sig, err = cs.SignContext(ctx, i.cfg.Rand, digest, opts)
	} else {
		sig, err = a.Signer.Sign(i.cfg.Rand, digest, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: signer failed: %w", err)
	}
	// Certificate ::= SEQUENCE { tbs, signatureAlgorithm, BIT STRING }
	n := len(tbs) + len(a.sigAlgDER) + tlvLen(1+len(sig))
	start := room - (tlvLen(n) - n)
	appendHeader(buf[start:start], tagSequence, n)
	buf = append(buf, a.sigAlgDER...)
	buf = appendHeader(buf, tagBitString, 1+len(sig))
	buf = append(buf, 0) // no unused bits
	buf = append(buf, sig...)
	return buf[start:], nil
}

// serialLen is the length of a serial number, in bytes.
const serialLen = 16

// readSerial fills b with a positive random serial number of 127 bits (at
// least 64 bits of entropy, as CA/B and SPIFFE practice ask), big-endian.
func readSerial(r io.Reader, b *[serialLen]byte) error {
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return err
	}
	b[0] &= 0x7f // positive
	b[0] |= 0x40 // full length: never shorter than 127 bits
	return nil
}

// randomSerial returns a serial number from readSerial as a big.Int, for
// crypto/x509 templates.
func randomSerial(r io.Reader) (*big.Int, error) {
	var b [serialLen]byte
	if err := readSerial(r, &b); err != nil {
		return nil, err
	}
	return new(big.Int).SetBytes(b[:]), nil
}

// certificatePEM encodes der as a PEM CERTIFICATE block, as
// encoding/pem.EncodeToMemory does, in one allocation.
func certificatePEM(der []byte) string {
	const (
		begin = "-----BEGIN CERTIFICATE-----\n"
		end   = "-----END CERTIFICATE-----\n"
		line  = 48 // input bytes per 64-character line
	)
	enc := base64.StdEncoding
	lines := (len(der) + line - 1) / line
	var b strings.Builder
	b.Grow(len(begin) + enc.EncodedLen(len(der)) + lines + len(end))
	b.WriteString(begin)
	var out [64]byte
	for len(der) > 0 {
		n := min(line, len(der))
		enc.Encode(out[:], der[:n])
		b.Write(out[:enc.EncodedLen(n)])
		b.WriteByte('\n')
		der = der[n:]
	}
	b.WriteString(end)
	return b.String()
}
