package inspect

import "time"

// SchemaVersion is the version of the JSON schema that Report follows. It
// changes only when a field is removed or changes meaning; new fields may be
// added without changing it.
const SchemaVersion = 1

// Status is the overall verdict of a Report.
type Status string

const (
	// StatusValid means no finding was raised.
	StatusValid Status = "valid"
	// StatusWarning means at least one warning and no error was raised.
	StatusWarning Status = "warning"
	// StatusInvalid means at least one error was raised: a peer that checks
	// the certificate as the mesh does would reject it.
	StatusInvalid Status = "invalid"
)

// Profile is what the inspected certificates are, which decides how they
// are judged.
type Profile string

const (
	// ProfileSVID is a leaf with a spiffe:// URI SAN, judged as an X509-SVID.
	ProfileSVID Profile = "svid"
	// ProfileTLS is a leaf without a SPIFFE ID, judged as an ordinary TLS
	// certificate: path validation, lifetime and key, no X509-SVID rules.
	ProfileTLS Profile = "tls"
	// ProfileCA is a chain that starts with a CA certificate (Istio's
	// cacerts, an intermediate, a single root), judged as SVID signing
	// certificates.
	ProfileCA Profile = "ca"
	// ProfileBundle is two or more self-signed CA certificates with no
	// chain between them: a trust bundle, each root judged on its own.
	ProfileBundle Profile = "bundle"
)

// Severity says how bad a Finding is.
type Severity string

const (
	// SeverityWarning marks a problem that does not yet break mTLS, such as
	// a certificate close to expiry.
	SeverityWarning Severity = "warning"
	// SeverityError marks a problem that makes the certificate unusable or
	// non-conformant, such as an expired certificate or a chain that does
	// not verify.
	SeverityError Severity = "error"
)

// Report is the result of inspecting one certificate chain. It is the JSON
// document that `castellan cert inspect --format json` prints; every field is
// part of the documented schema (see the package documentation).
type Report struct {
	// SchemaVersion is SchemaVersion.
	SchemaVersion int `json:"schema_version"`
	// Source says where the chain came from, for example "file:cert.pem",
	// "secret:istio-system/cacerts" or "tls:10.0.0.1:443".
	Source string `json:"source"`
	// InspectedAt is the time against which validity was judged (UTC).
	InspectedAt time.Time `json:"inspected_at"`
	// Status is the overall verdict.
	Status Status `json:"status"`
	// Profile is what the certificates were judged as.
	Profile Profile `json:"profile"`
	// Certificates is the chain as the source presented it, leaf first.
	Certificates []Certificate `json:"certificates"`
	// Bundle is the trust bundle the chain was verified against; nil when
	// none was available.
	Bundle *Bundle `json:"bundle,omitempty"`
	// Verification holds the chain, X509-SVID and private-key checks.
	Verification Verification `json:"verification"`
	// Findings lists every problem found, errors and warnings, in a stable
	// order. It is empty, not null, when nothing was found.
	Findings []Finding `json:"findings"`
	// Notes are facts about the source worth knowing that are not problems,
	// such as "the server requested a client certificate".
	Notes []string `json:"notes,omitempty"`
}

// Certificate describes one X.509 certificate.
type Certificate struct {
	// Ref names the certificate within the report: "chain[0]" is the
	// leaf, "bundle[1]" the second certificate of the trust bundle.
	Ref string `json:"ref"`
	// Role is "root" for a self-signed CA certificate, "intermediate" for
	// another CA certificate, and "leaf" for the first certificate of the
	// chain when it is not a CA.
	Role string `json:"role"`
	// Subject and Issuer are distinguished names in RFC 2253 form; empty
	// when the certificate has an empty name.
	Subject string `json:"subject"`
	// Issuer is the issuer's distinguished name.
	Issuer string `json:"issuer"`
	// SPIFFEID is the first URI SAN that is a well-formed SPIFFE ID, or
	// empty.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// URIs, DNSNames, IPAddresses and EmailAddresses are the subject
	// alternative names, URIs including the SPIFFE ID.
	URIs []string `json:"uris,omitempty"`
	// DNSNames are the DNS SANs.
	DNSNames []string `json:"dns_names,omitempty"`
	// IPAddresses are the IP SANs.
	IPAddresses []string `json:"ip_addresses,omitempty"`
	// EmailAddresses are the email SANs.
	EmailAddresses []string `json:"email_addresses,omitempty"`
	// Serial is the serial number as lowercase hex bytes separated by
	// colons.
	Serial string `json:"serial"`
	// PublicKey describes the subject public key.
	PublicKey PublicKey `json:"public_key"`
	// SignatureAlgorithm is the issuer's signature algorithm, in Go's
	// naming ("ECDSA-SHA256", "SHA256-RSA", "Ed25519").
	SignatureAlgorithm string `json:"signature_algorithm"`
	// Validity is the validity period and how much of it is left.
	Validity Validity `json:"validity"`
	// IsCA reports the basic constraints cA flag.
	IsCA bool `json:"is_ca"`
	// MaxPathLen is the pathLenConstraint; nil when absent.
	MaxPathLen *int `json:"max_path_len,omitempty"`
	// SelfSigned reports whether the certificate's signature verifies
	// with its own key and its issuer equals its subject.
	SelfSigned bool `json:"self_signed"`
	// SubjectKeyID and AuthorityKeyID are lowercase hex bytes separated by
	// colons; empty when the extension is absent.
	SubjectKeyID string `json:"subject_key_id,omitempty"`
	// AuthorityKeyID is the authority key identifier.
	AuthorityKeyID string `json:"authority_key_id,omitempty"`
	// KeyUsage lists the key usage bits by their RFC 5280 names
	// ("digitalSignature", "keyCertSign", ...); empty when the extension
	// is absent.
	KeyUsage []string `json:"key_usage,omitempty"`
	// KeyUsageCritical reports whether the key usage extension is marked
	// critical.
	KeyUsageCritical bool `json:"key_usage_critical"`
	// ExtKeyUsage lists the extended key usages ("serverAuth",
	// "clientAuth", ...); unknown ones appear as dotted OIDs.
	ExtKeyUsage []string `json:"ext_key_usage,omitempty"`
	// FingerprintSHA256 is the SHA-256 of the DER encoding, lowercase hex
	// bytes separated by colons.
	FingerprintSHA256 string `json:"fingerprint_sha256"`
}

// PublicKey describes a subject public key.
type PublicKey struct {
	// Algorithm is "RSA", "ECDSA", "Ed25519" or "unknown".
	Algorithm string `json:"algorithm"`
	// Bits is the key size in bits (the modulus for RSA, the curve size
	// for ECDSA, 256 for Ed25519); 0 when unknown.
	Bits int `json:"bits"`
	// Curve is the ECDSA curve name ("P-256"); empty for other keys.
	Curve string `json:"curve,omitempty"`
}

// Validity is a certificate's validity period judged at Report.InspectedAt.
type Validity struct {
	// NotBefore and NotAfter are the validity bounds (UTC).
	NotBefore time.Time `json:"not_before"`
	// NotAfter is the end of the validity period.
	NotAfter time.Time `json:"not_after"`
	// LifetimeSeconds is NotAfter minus NotBefore.
	LifetimeSeconds int64 `json:"lifetime_seconds"`
	// RemainingSeconds is NotAfter minus the inspection time; negative once
	// expired.
	RemainingSeconds int64 `json:"remaining_seconds"`
	// RemainingPercent is the share of the lifetime left, from 0 to 100
	// (100 before NotBefore, 0 once expired), rounded to one decimal.
	RemainingPercent float64 `json:"remaining_percent"`
	// State is "valid", "expired" or "not_yet_valid".
	State string `json:"state"`
}

// Bundle is the trust bundle a chain was verified against.
type Bundle struct {
	// Source says where the bundle came from ("file:root-cert.pem",
	// "sds:ROOTCA", "secret:ns/name:ca.crt", ...).
	Source string `json:"source"`
	// Certificates are the trust anchors, described like the chain.
	Certificates []Certificate `json:"certificates"`
}

// Verification holds the results of the three checks.
type Verification struct {
	// Chain is the path validation of the chain against the bundle.
	Chain ChainCheck `json:"chain"`
	// SVID is the X509-SVID conformance check of the chain.
	SVID SVIDCheck `json:"svid"`
	// Key is the check that the private key matches the leaf.
	Key KeyCheck `json:"key"`
}

// ChainCheck is the RFC 5280 path validation of the chain against the
// bundle, at the inspection time, with any extended key usage accepted.
type ChainCheck struct {
	// Checked is false when no bundle was available.
	Checked bool `json:"checked"`
	// Verified reports whether a path to a bundle certificate was found.
	Verified bool `json:"verified"`
	// Path lists the Refs of the verified path, leaf first, when Verified.
	Path []string `json:"path,omitempty"`
	// Error is the verifier's message when Checked and not Verified.
	Error string `json:"error,omitempty"`
}

// SVIDCheck is the X509-SVID conformance check: go-spiffe's validation plus
// every MUST of the X509-SVID specification.
type SVIDCheck struct {
	// Checked is false when the chain is not meant to be an X509-SVID: a
	// leaf without a SPIFFE ID (Profile "tls").
	Checked bool `json:"checked"`
	// Kind is "leaf" when the first certificate was checked as a leaf
	// SVID, or "signing" when it is a CA certificate and the chain was
	// checked as SVID signing certificates (for example Istio's cacerts).
	Kind string `json:"kind,omitempty"`
	// Conformant reports whether no specification MUST was violated.
	Conformant bool `json:"conformant"`
	// SPIFFEID is the leaf's SPIFFE ID when it has a well-formed one.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// TrustDomain is the SPIFFE ID's trust domain.
	TrustDomain string `json:"trust_domain,omitempty"`
	// Violations lists the finding codes of the MUSTs violated.
	Violations []string `json:"violations,omitempty"`
}

// KeyCheck reports whether a private key matches the leaf's public key.
type KeyCheck struct {
	// Checked is false when no private key was given or delivered.
	Checked bool `json:"checked"`
	// Matches reports whether the key matches the leaf.
	Matches bool `json:"matches"`
	// Source says where the key came from; the key itself never appears.
	Source string `json:"source,omitempty"`
}

// Finding is one problem, in plain words.
type Finding struct {
	// Code is a stable identifier for scripts; see the package
	// documentation for the list.
	Code string `json:"code"`
	// Severity is "warning" or "error".
	Severity Severity `json:"severity"`
	// Certificate is the Ref of the certificate concerned ("chain[0]").
	Certificate string `json:"certificate,omitempty"`
	// Message explains the problem for a human.
	Message string `json:"message"`
}
