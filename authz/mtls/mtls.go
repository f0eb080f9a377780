// Package mtls computes a workload's effective mutual TLS mode from Istio
// PeerAuthentication policies, per port, and renders it as Envoy listener
// settings: filter chains with a DownstreamTlsContext whose certificate and
// trust bundle come from SDS.
package mtls

import (
	"maps"
	"slices"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/castellan-mesh/castellan/authz/policy"
)

// Mode is an effective mTLS mode.
type Mode string

// The effective modes. UNSET never appears in a result: it inherits.
const (
	// Strict accepts only mutual TLS connections.
	Strict Mode = "STRICT"
	// Permissive accepts both mutual TLS and plaintext.
	Permissive Mode = "PERMISSIVE"
	// Disable accepts only plaintext (TLS bytes pass through untouched).
	Disable Mode = "DISABLE"
)

// DefaultMode applies when no policy sets a mode.
const DefaultMode = Permissive

// Scope is the level a policy applies at.
type Scope string

// The scopes, from the most specific.
const (
	ScopeWorkload  Scope = "workload"
	ScopeNamespace Scope = "namespace"
	ScopeMesh      Scope = "mesh"
	// ScopeDefault means no policy set the mode.
	ScopeDefault Scope = "default"
)

// Setting is an effective mode and the policy it came from.
type Setting struct {
	Mode Mode
	// Scope and Policy say which policy set the mode; Policy is the zero
	// Key for ScopeDefault.
	Scope  Scope
	Policy policy.Key
}

// Result is the effective mTLS configuration of one workload.
type Result struct {
	// Workload is the mode on every port without a port-level setting.
	Workload Setting
	// Ports holds the port-level settings, from the workload-level policy
	// only.
	Ports map[uint32]Setting
}

// Mode returns the effective mode on port.
func (r Result) Mode(port uint32) Mode {
	if s, ok := r.Ports[port]; ok {
		return s.Mode
	}
	return r.Workload.Mode
}

// SortedPorts returns the ports with a port-level setting, in order.
func (r Result) SortedPorts() []uint32 {
	return slices.Sorted(maps.Keys(r.Ports))
}

// Resolve computes the effective mTLS configuration of w from the
// PeerAuthentications in pas (others are ignored), with Istio's precedence:
//
//  1. a workload policy (selector, in w's namespace) over the namespace
//     policy (no selector, in w's namespace) over the mesh policy (no
//     selector, in rootNamespace);
//  2. within a scope, the oldest policy wins (then namespace and name);
//  3. UNSET inherits from the next scope up;
//  4. port-level settings come from the workload policy only, and a
//     port-level UNSET inherits the workload's effective mode;
//  5. with no policy at all, PERMISSIVE;
//  6. a policy with a selector in rootNamespace is ignored, even for
//     workloads in rootNamespace.
func Resolve(pas []*policy.Resource, w policy.Workload, rootNamespace string) Result {
	var mesh, ns, wl *policy.Resource
	older := func(cur, cand *policy.Resource) *policy.Resource {
		if cur == nil || cand.Older(cur) {
			return cand
		}
		return cur
	}
	for _, r := range pas {
		if r == nil || r.PeerAuthentication == nil {
			continue
		}
		labels := r.PeerAuthentication.GetSelector().GetMatchLabels()
		switch {
		case len(labels) == 0 && r.Meta.Namespace == rootNamespace:
			mesh = older(mesh, r)
		case len(labels) == 0 && r.Meta.Namespace == w.Namespace:
			ns = older(ns, r)
		case r.Meta.Namespace == rootNamespace:
			// A selector policy in the root namespace is ignored.
		case r.Meta.Namespace == w.Namespace && policy.MatchesLabels(labels, w.Labels):
			wl = older(wl, r)
		}
	}
	res := Result{Workload: Setting{Mode: DefaultMode, Scope: ScopeDefault}}
	for _, lvl := range []struct {
		r     *policy.Resource
		scope Scope
	}{{mesh, ScopeMesh}, {ns, ScopeNamespace}, {wl, ScopeWorkload}} {
		if lvl.r == nil {
			continue
		}
		if m, ok := modeOf(lvl.r.PeerAuthentication.GetMtls()); ok {
			res.Workload = Setting{Mode: m, Scope: lvl.scope, Policy: lvl.r.Key()}
		}
	}
	if wl == nil {
		return res
	}
	for port, tls := range wl.PeerAuthentication.GetPortLevelMtls() {
		if m, ok := modeOf(tls); ok {
			res.Ports = setPort(res.Ports, port, Setting{Mode: m, Scope: ScopeWorkload, Policy: wl.Key()})
		} else {
			res.Ports = setPort(res.Ports, port, res.Workload)
		}
	}
	return res
}

func setPort(m map[uint32]Setting, port uint32, s Setting) map[uint32]Setting {
	if m == nil {
		m = map[uint32]Setting{}
	}
	m[port] = s
	return m
}

// modeOf returns the mode a MutualTLS sets, or false for UNSET (or nil).
func modeOf(t *securityv1beta1.PeerAuthentication_MutualTLS) (Mode, bool) {
	switch t.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return Strict, true
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return Permissive, true
	case securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return Disable, true
	}
	return "", false
}
