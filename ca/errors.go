package ca

import (
	"errors"
	"fmt"
)

// Reason classifies why a signing request was rejected. It is used as a
// metric label, so the set is small and fixed.
type Reason string

// The reasons the Issuer reports.
const (
	// ReasonMalformedCSR: the CSR is not one well-formed PEM certificate
	// request.
	ReasonMalformedCSR Reason = "malformed_csr"
	// ReasonBadSignature: the CSR's self-signature does not verify.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonUnsupportedKey: the CSR's key type or size is not accepted.
	ReasonUnsupportedKey Reason = "unsupported_key"
	// ReasonForbiddenSAN: the CSR asks for an IP or email SAN, for more
	// than one URI, or for a DNS SAN when no DNSProfile names the caller.
	ReasonForbiddenSAN Reason = "forbidden_san"
	// ReasonDNSNotAllowed: the CSR asks for a DNS SAN its service
	// account's DNSProfile does not list, or asks for one through
	// impersonation.
	ReasonDNSNotAllowed Reason = "dns_san_not_allowed"
	// ReasonIdentityMismatch: the CSR names a SPIFFE ID other than the
	// caller's proven identity.
	ReasonIdentityMismatch Reason = "identity_mismatch"
	// ReasonInvalidTTL: the requested validity is negative.
	ReasonInvalidTTL Reason = "invalid_ttl"
	// ReasonCAUnavailable: the CA has no usable signing material (for
	// example, its certificate has expired).
	ReasonCAUnavailable Reason = "ca_unavailable"
)

// RejectError reports a signing request that was refused, with its reason.
type RejectError struct {
	Reason Reason
	Err    error
}

func (e *RejectError) Error() string { return "ca: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *RejectError) Unwrap() error { return e.Err }

func reject(reason Reason, format string, args ...any) error {
	return &RejectError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the rejection reason carried by err, or "" if err is not
// a *RejectError.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}
