package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	securityv1 "istio.io/api/security/v1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// This file turns a resource that failed validation into its fail-closed
// form: the most restrictive reading of what it says. An invalid policy is
// never dropped, because dropping it can open the mesh: with a typo in the
// only ALLOW policy of a workload, dropping it would allow every request.
//
// The rules:
//   - AuthorizationPolicy ALLOW (or no action): an ALLOW policy without
//     rules, which matches nothing. On the workloads it selects, a request
//     is allowed only if another, valid ALLOW policy allows it.
//   - AuthorizationPolicy DENY, AUDIT or CUSTOM: one empty rule, which
//     matches every request; so a DENY denies (and a CUSTOM, enforced as
//     DENY, denies) and an AUDIT audits everything on the workloads it
//     selects.
//   - An action that cannot be read is taken as DENY.
//   - The workloads selected: the selector, targetRef or targetRefs when
//     exactly one of them is set and it is valid; otherwise every workload
//     in the policy's namespace (in the whole mesh for the root namespace).
//   - PeerAuthentication: the mode is kept when it can be read, else
//     STRICT. Port-level modes are kept likewise. If the selector or the
//     port-level settings cannot be read, the policy applies to the whole
//     namespace in STRICT mode.
//   - A resource whose name cannot be read cannot be enforced; it is only
//     reported.
//
// The istio.io/dry-run annotation is honoured when it is valid: a dry-run
// policy never changes a decision.

// FailClosedNote describes how an invalid resource is enforced, for
// reports; empty when the resource is valid.
func (r *Resource) FailClosedNote() string {
	if r.Invalid == nil {
		return ""
	}
	switch r.Kind {
	case KindAuthorizationPolicy:
		p := r.AuthorizationPolicy
		scope := "the workloads it selects"
		if p.GetSelector() == nil && p.GetTargetRef() == nil && len(p.GetTargetRefs()) == 0 {
			scope = "every workload in namespace " + r.Meta.Namespace
		}
		switch p.GetAction() {
		case securityv1.AuthorizationPolicy_ALLOW:
			return fmt.Sprintf("%s is invalid: enforced as an ALLOW policy that matches nothing, on %s", r.Key(), scope)
		case securityv1.AuthorizationPolicy_AUDIT:
			return fmt.Sprintf("%s is invalid: enforced as AUDIT of every request, on %s", r.Key(), scope)
		default:
			return fmt.Sprintf("%s is invalid: enforced as DENY of every request, on %s", r.Key(), scope)
		}
	case KindPeerAuthentication:
		return fmt.Sprintf("%s is invalid: enforced with mTLS mode %s", r.Key(), r.PeerAuthentication.GetMtls().GetMode())
	}
	return ""
}

// failClosed returns the fail-closed form of r, whose decoding or
// validation failed with err; spec is the raw spec. It returns nil when the
// resource cannot be identified.
func failClosed(r *Resource, spec json.RawMessage, err error) *Resource {
	if r.Meta.Name == "" {
		return nil
	}
	out := &Resource{APIVersion: r.APIVersion, Kind: r.Kind, Meta: r.Meta, Origin: r.Origin, Invalid: err}
	if v, ok := r.Meta.Annotations[DryRunAnnotation]; ok {
		if _, perr := strconv.ParseBool(v); perr != nil {
			out.Meta.Annotations = cloneWithout(r.Meta.Annotations, DryRunAnnotation)
		}
	}
	fields := map[string]json.RawMessage{}
	_ = json.Unmarshal(spec, &fields) // unreadable: every field stays unset
	switch r.Kind {
	case KindAuthorizationPolicy:
		out.AuthorizationPolicy = failClosedAuthz(fields, r.Meta.Namespace)
	case KindPeerAuthentication:
		out.PeerAuthentication = failClosedPeer(fields)
	default:
		return nil
	}
	return out
}

func cloneWithout(m map[string]string, drop string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if k != drop {
			out[k] = v
		}
	}
	return out
}

func failClosedAuthz(fields map[string]json.RawMessage, ns string) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{}
	action := "ALLOW"
	if raw, ok := fields["action"]; ok {
		if err := json.Unmarshal(raw, &action); err != nil {
			action = ""
		}
	}
	matchAll := []*securityv1.Rule{{}}
	switch action {
	case "ALLOW":
		p.Action = securityv1.AuthorizationPolicy_ALLOW
	case "AUDIT":
		p.Action, p.Rules = securityv1.AuthorizationPolicy_AUDIT, matchAll
	case "CUSTOM":
		p.Action, p.Rules = securityv1.AuthorizationPolicy_CUSTOM, matchAll
	default: // DENY, or unreadable
		p.Action, p.Rules = securityv1.AuthorizationPolicy_DENY, matchAll
	}
	_, hasSel := fields["selector"]
	_, hasRef := fields["targetRef"]
	_, hasRefs := fields["targetRefs"]
	switch {
	case hasSel && !hasRef && !hasRefs:
		p.Selector = readSelector(fields["selector"])
	case hasRef && !hasSel && !hasRefs:
		var ref typev1beta1.PolicyTargetReference
		if readTargetRef(fields["targetRef"], ns, &ref) {
			p.TargetRef = &ref
		}
	case hasRefs && !hasSel && !hasRef:
		var raws []json.RawMessage
		if json.Unmarshal(fields["targetRefs"], &raws) != nil || len(raws) == 0 {
			break
		}
		refs := make([]*typev1beta1.PolicyTargetReference, 0, len(raws))
		for _, raw := range raws {
			var ref typev1beta1.PolicyTargetReference
			if !readTargetRef(raw, ns, &ref) {
				refs = nil // one unreadable target: widen to the namespace
				break
			}
			refs = append(refs, &ref)
		}
		p.TargetRefs = refs
	}
	return p
}

// readSelector returns the selector if it is readable and valid, else nil
// (which selects the whole namespace).
func readSelector(raw json.RawMessage) *typev1beta1.WorkloadSelector {
	var s struct {
		MatchLabels map[string]string `json:"matchLabels"`
	}
	var all map[string]json.RawMessage
	if json.Unmarshal(raw, &all) != nil || json.Unmarshal(raw, &s) != nil {
		return nil
	}
	for k := range all {
		if k != "matchLabels" {
			return nil
		}
	}
	sel := &typev1beta1.WorkloadSelector{MatchLabels: s.MatchLabels}
	var fe fieldErrors
	validateSelector(sel, "selector", &fe)
	if len(fe.list) > 0 || len(sel.MatchLabels) == 0 {
		return nil
	}
	return sel
}

func readTargetRef(raw json.RawMessage, ns string, ref *typev1beta1.PolicyTargetReference) bool {
	var t struct {
		Group     string `json:"group"`
		Kind      string `json:"kind"`
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	}
	if json.Unmarshal(raw, &t) != nil {
		return false
	}
	ref.Group, ref.Kind, ref.Name, ref.Namespace = t.Group, t.Kind, t.Name, t.Namespace
	var fe fieldErrors
	validateTargetRef(ref, ns, "targetRef", &fe)
	return len(fe.list) == 0
}

func failClosedPeer(fields map[string]json.RawMessage) *securityv1.PeerAuthentication {
	p := &securityv1.PeerAuthentication{Mtls: &securityv1.PeerAuthentication_MutualTLS{Mode: readMode(fields["mtls"], true)}}
	raw, hasSel := fields["selector"]
	if !hasSel {
		if _, hasPorts := fields["portLevelMtls"]; hasPorts {
			// Port-level settings need a selector; without one, STRICT.
			p.Mtls.Mode = securityv1.PeerAuthentication_MutualTLS_STRICT
		}
		return p
	}
	p.Selector = readSelector(raw)
	if p.Selector == nil {
		p.Mtls.Mode = securityv1.PeerAuthentication_MutualTLS_STRICT
		return p
	}
	if raw, ok := fields["portLevelMtls"]; ok {
		var ports map[string]json.RawMessage
		if json.Unmarshal(raw, &ports) != nil {
			p.Mtls.Mode = securityv1.PeerAuthentication_MutualTLS_STRICT
			return p
		}
		for k, v := range ports {
			n, err := strconv.ParseUint(k, 10, 32)
			if err != nil || n < 1 || n > 65535 {
				// A port that cannot be read: its setting cannot be placed,
				// so the whole workload becomes STRICT.
				p.Mtls.Mode = securityv1.PeerAuthentication_MutualTLS_STRICT
				continue
			}
			if p.PortLevelMtls == nil {
				p.PortLevelMtls = map[uint32]*securityv1.PeerAuthentication_MutualTLS{}
			}
			p.PortLevelMtls[uint32(n)] = &securityv1.PeerAuthentication_MutualTLS{Mode: readMode(v, false)}
		}
	}
	return p
}

// readMode reads {"mode": "..."}: a missing object or mode is UNSET when
// absentIsUnset (the policy inherits), and anything unreadable is STRICT.
func readMode(raw json.RawMessage, absentIsUnset bool) securityv1.PeerAuthentication_MutualTLS_Mode {
	strict := securityv1.PeerAuthentication_MutualTLS_STRICT
	if raw == nil || string(raw) == "null" {
		if absentIsUnset {
			return securityv1.PeerAuthentication_MutualTLS_UNSET
		}
		return strict
	}
	var m struct {
		Mode *string `json:"mode"`
	}
	if json.Unmarshal(raw, &m) != nil {
		return strict
	}
	if m.Mode == nil {
		return securityv1.PeerAuthentication_MutualTLS_UNSET
	}
	switch *m.Mode {
	case "UNSET":
		return securityv1.PeerAuthentication_MutualTLS_UNSET
	case "DISABLE":
		return securityv1.PeerAuthentication_MutualTLS_DISABLE
	case "PERMISSIVE":
		return securityv1.PeerAuthentication_MutualTLS_PERMISSIVE
	case "STRICT":
		return strict
	}
	return strict
}

// ErrRequestAuthenticationUnsupported is wrapped by the *Error reported for
// a RequestAuthentication.
var ErrRequestAuthenticationUnsupported = errors.New("RequestAuthentication is not enforced by Castellan: it does not configure Envoy's JWT filter " +
	"(envoy.filters.http.jwt_authn), so tokens are not validated by it; AuthorizationPolicy requestPrincipals and request.auth.* " +
	"conditions read that filter's metadata (payload_in_metadata: payload) and match nothing without it, " +
	"so ALLOW rules that need a JWT allow nothing and notRequestPrincipals DENY rules deny every request")

func requestAuthenticationNotice(top map[string]json.RawMessage, origin Origin, prefix string) error {
	var meta struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	}
	_ = json.Unmarshal(top["metadata"], &meta)
	if meta.Namespace == "" {
		meta.Namespace = DefaultNamespace
	}
	return &Error{Origin: origin, Kind: KindRequestAuthentication, Namespace: meta.Namespace, Name: meta.Name,
		Field: prefix + "kind", Err: ErrRequestAuthenticationUnsupported}
}

// InvalidError reports a resource that failed validation and is enforced in
// its fail-closed form, which Note describes.
type InvalidError struct {
	Note string
	Err  error
}

// Error implements error.
func (e *InvalidError) Error() string { return e.Note + ": " + e.Err.Error() }

// Unwrap returns the validation problems.
func (e *InvalidError) Unwrap() error { return e.Err }

// InvalidError returns an *InvalidError for an invalid resource, or nil.
func (r *Resource) InvalidError() error {
	if r.Invalid == nil {
		return nil
	}
	return &InvalidError{Note: r.FailClosedNote(), Err: r.Invalid}
}
