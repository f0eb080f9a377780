// Package policy decodes, validates and selects Istio security policies:
// security.istio.io AuthorizationPolicy and PeerAuthentication, in their v1
// and v1beta1 forms, read unchanged from YAML or JSON.
//
// Decoding is strict. An unknown field, a bad CIDR, an invalid port, a bad
// wildcard or a malformed header key is an *Error that names the file, the
// document and the field path. One bad resource never stops the others from
// being decoded.
package policy

import (
	"fmt"
	"strconv"
	"time"

	securityv1 "istio.io/api/security/v1"
)

// Group is the API group of the resources this package reads.
const Group = "security.istio.io"

// DryRunAnnotation marks an AuthorizationPolicy whose rules are evaluated
// but not enforced (Envoy shadow rules) when its value is "true".
const DryRunAnnotation = "istio.io/dry-run"

// Kind is a resource kind this package understands.
type Kind string

// The kinds of resource this package decodes.
const (
	KindAuthorizationPolicy Kind = "AuthorizationPolicy"
	KindPeerAuthentication  Kind = "PeerAuthentication"
	// KindRequestAuthentication is recognised so that it can be reported:
	// Castellan does not configure JWT validation (see
	// ErrRequestAuthenticationUnsupported).
	KindRequestAuthentication Kind = "RequestAuthentication"
)

// Key identifies one resource.
type Key struct {
	Kind      Kind
	Namespace string
	Name      string
}

// String returns the key as "Kind namespace/name".
func (k Key) String() string {
	return fmt.Sprintf("%s %s/%s", k.Kind, k.Namespace, k.Name)
}

// Meta is the part of a resource's metadata that policy evaluation uses.
type Meta struct {
	Name              string
	Namespace         string
	Labels            map[string]string
	Annotations       map[string]string
	CreationTimestamp time.Time
	Generation        int64
	ResourceVersion   string
	UID               string
}

// Origin says where a resource was read from: a file and the 1-based index of
// the YAML document in it, or a live object (File empty, Doc 0).
type Origin struct {
	File string
	Doc  int
	// Line is the 1-based line where the document starts; 0 if unknown.
	Line int
}

// String describes the origin for error messages, for example
// "policies/deny.yaml: document 2 (line 14)".
func (o Origin) String() string {
	switch {
	case o.File == "" && o.Doc == 0:
		return ""
	case o.Doc == 0:
		return o.File
	case o.Line > 0:
		return fmt.Sprintf("%s: document %d (line %d)", o.fileName(), o.Doc, o.Line)
	default:
		return fmt.Sprintf("%s: document %d", o.fileName(), o.Doc)
	}
}

func (o Origin) fileName() string {
	if o.File == "" {
		return "<input>"
	}
	return o.File
}

// Resource is one decoded and validated policy. Exactly one of
// AuthorizationPolicy and PeerAuthentication is set, as Kind says.
type Resource struct {
	// APIVersion is the apiVersion the resource was written with.
	APIVersion string
	Kind       Kind
	Meta       Meta
	Origin     Origin

	AuthorizationPolicy *securityv1.AuthorizationPolicy
	PeerAuthentication  *securityv1.PeerAuthentication

	// Invalid is set when the resource failed decoding or validation; it
	// holds the problems. The resource then carries only its fail-closed
	// form (see FailClosedNote): it is enforced at its most restrictive,
	// never dropped.
	Invalid error
}

// Key returns the resource's key.
func (r *Resource) Key() Key {
	return Key{Kind: r.Kind, Namespace: r.Meta.Namespace, Name: r.Meta.Name}
}

// DryRun reports whether the resource is annotated istio.io/dry-run with a
// true value ("true", "True", "1", ...). Validation has already rejected
// values that are neither true nor false.
func (r *Resource) DryRun() bool {
	v, err := strconv.ParseBool(r.Meta.Annotations[DryRunAnnotation])
	return err == nil && v
}

// Older reports whether r was created before o. Resources created at the
// same instant (or without a creation time, as in files) are ordered by
// namespace and then name, so the order is total and stable.
func (r *Resource) Older(o *Resource) bool {
	a, b := r.Meta.CreationTimestamp, o.Meta.CreationTimestamp
	if !a.Equal(b) {
		return a.Before(b)
	}
	if r.Meta.Namespace != o.Meta.Namespace {
		return r.Meta.Namespace < o.Meta.Namespace
	}
	return r.Meta.Name < o.Meta.Name
}
