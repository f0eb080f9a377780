// Package authn proves who a caller of the CA is. A caller presents a bearer
// token; an Authenticator checks it and returns the Kubernetes service
// account it belongs to. Nothing is issued for a caller that was not proven.
package authn

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/castellan-mesh/castellan/internal/dnsname"
)

// Caller is a Kubernetes service account whose token was verified.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// ServiceAccountUID is the UID of the service account the token was
	// issued for, when the token names it (Kubernetes tokens do), empty
	// otherwise.
	ServiceAccountUID string

	// PodName and PodUID name the pod the token is bound to, when it is a
	// pod-bound projected token (TokenReview's user.extra
	// authentication.kubernetes.io/pod-name and pod-uid, or the token's
	// kubernetes.io.pod claim). Both are empty for a token bound to no pod.
	PodName string
	PodUID  string
	// NodeName is the node of that pod when the token records it
	// (authentication.kubernetes.io/node-name), empty otherwise.
	NodeName string
	// Cluster is the remote cluster whose API server proved the token
	// (see Clusters), empty for the local cluster. Pod and node names
	// are that cluster's.
	Cluster string
}

// Authenticator verifies a bearer token and returns the caller it proves.
// Implementations must be safe for concurrent use.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// Reason classifies an authentication failure. It is used as a metric label,
// so the set is small and fixed.
type Reason string

// The reasons an Authenticator reports.
const (
	// ReasonNoToken: no bearer token was presented.
	ReasonNoToken Reason = "no_token"
	// ReasonMalformed: the token is not a well-formed JWT.
	ReasonMalformed Reason = "malformed_token"
	// ReasonInvalid: the token was checked and rejected (bad signature,
	// wrong audience, expired, unknown or deleted service account).
	ReasonInvalid Reason = "invalid_token"
	// ReasonNotServiceAccount: the token is valid but does not name a
	// Kubernetes service account.
	ReasonNotServiceAccount Reason = "not_service_account"
	// ReasonUnavailable: the token could not be checked, for example because
	// the API server did not answer. The caller may retry.
	ReasonUnavailable Reason = "unavailable"
)

// Error is an authentication failure with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return "authn: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given reason.
func Errorf(reason Reason, format string, args ...any) error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of err, or ReasonInvalid when err carries none.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInvalid
}

const saPrefix = "system:serviceaccount:"

// ParseUsername turns a Kubernetes username of the form
// system:serviceaccount:<namespace>:<name> into a Caller.
func ParseUsername(username string) (Caller, error) {
	rest, ok := strings.CutPrefix(username, saPrefix)
	if !ok {
		return Caller{}, Errorf(ReasonNotServiceAccount, "user %q is not a service account", username)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	// DNS-1123 subdomains, as Kubernetes names are; this also keeps "/"
	// and ":" out of SPIFFE IDs.
	if !ok || !dnsname.IsSubdomain(ns) || !dnsname.IsSubdomain(sa) {
		return Caller{}, Errorf(ReasonNotServiceAccount, "malformed service account username %q", username)
	}
	return Caller{Namespace: ns, ServiceAccount: sa}, nil
}
