// Package inspect analyses a certificate chain the way a mesh peer would
// judge it and renders the result for humans and scripts. It backs
// `castellan cert inspect`.
//
// Analyze takes an Input (the chain as a source delivered it, the trust
// bundle, and the public half of the private key, all optional but the chain)
// and returns a Report:
//
//   - every certificate described: subject, issuer, SPIFFE ID and other SANs,
//     serial, key type and size, signature algorithm, validity with the share
//     of the lifetime left, SKID and AKID, key usage and extended key usage,
//     and SHA-256 fingerprint;
//   - path validation against the bundle (RFC 5280, with crypto/x509);
//   - X509-SVID conformance: go-spiffe's verification plus every MUST of the
//     X509-SVID specification for leaf and signing certificates;
//   - whether the private key matches the leaf;
//   - findings, in plain words, each with a stable code and a severity.
//
// WriteText, WriteShort and WriteJSON render a Report.
//
// # Profiles
//
// What the chain is decides how it is judged (Report.Profile):
//
//   - "svid": a leaf with a spiffe:// URI SAN, checked against every MUST of
//     the X509-SVID specification and go-spiffe's verification;
//   - "tls": a leaf without a SPIFFE ID, an ordinary TLS certificate:
//     lifetime, chain, key and subject alternative names, no X509-SVID rules;
//   - "ca": a chain that starts with a CA certificate (Istio's cacerts, a
//     root file), checked as SVID signing certificates; a self-signed CA is
//     labelled a root, another CA an intermediate;
//   - "bundle": two or more self-signed CA certificates, a trust bundle:
//     each root is checked on its own, and no chain is expected between them.
//
// # Status and exit codes
//
// A Report's Status is "invalid" when any finding is an error, "warning" when
// any is a warning, and "valid" otherwise. The command maps them to exit codes
// 0 (valid), 1 (warning) and 2 (invalid); 3 is a usage or I/O error.
//
// # Findings
//
// Errors (a peer that checks the certificate as the mesh does rejects it):
//
//	expired                    a chain certificate is past NotAfter
//	not-yet-valid              a chain certificate is before NotBefore
//	missing-intermediate       an issuer is in neither the chain nor the bundle
//	chain-order                the chain is not in issuing order
//	chain-signature            the named issuer's key did not sign the certificate
//	verify-failed              path validation against the bundle failed
//	key-mismatch               the private key does not match the leaf
//	multiple-uri-sans          more than one URI SAN (an SVID has exactly one)
//	svid-invalid-id            the URI SAN is not a valid SPIFFE ID
//	svid-root-id               a leaf SPIFFE ID without a path
//	svid-san-not-critical      empty subject but a non-critical SAN extension
//	svid-leaf-ca               a leaf SVID with CA=true
//	svid-no-key-usage          no key usage extension
//	svid-key-usage-not-critical the key usage extension is not critical
//	svid-no-digital-signature  a leaf without digitalSignature
//	svid-leaf-cert-sign        a leaf with keyCertSign
//	svid-leaf-crl-sign         a leaf with cRLSign
//	svid-ext-key-usage         an EKU without both serverAuth and clientAuth
//	svid-signing-not-ca        a signing certificate without CA=true
//	svid-signing-no-cert-sign  a signing certificate without keyCertSign
//	svid-signing-id-path       a signing certificate's SPIFFE ID has a path
//	svid-rejected              go-spiffe rejects the SVID for another reason
//	source-rejected            the source's standard client (Envoy's SDS
//	                           checks) refuses the material
//	no-certificate             the source held no certificate
//
// Warnings (nothing breaks yet, or the material is not meant as an SVID):
//
//	low-lifetime               under 20% of the lifetime left
//	expired, not-yet-valid     a bundle certificate (one stale anchor among
//	                           several need not break anything)
//	tls-no-san                 a TLS certificate (no SPIFFE ID) without any
//	                           subject alternative name
//	svid-no-ext-key-usage      a leaf SVID without the EKU extension (a SHOULD)
//	svid-signing-trust-domain  a signing certificate in another trust domain
//	unrelated-certificates     certificates after a self-signed one
//
// # JSON schema
//
// WriteJSON writes one Report object; the field names are the json tags of
// Report and the types it holds, and each field's meaning is in its doc
// comment. SchemaVersion (currently 1) changes only when a field is removed
// or changes meaning; fields may be added. Certificates are referred to by
// their Ref, "chain[i]" or "bundle[i]". Times are RFC 3339 in UTC. Key
// identifiers, serials and fingerprints are lowercase hex bytes separated by
// colons. Lists that are empty are omitted, except "certificates" and
// "findings", which are always present. README.md in this directory shows an
// example.
package inspect
