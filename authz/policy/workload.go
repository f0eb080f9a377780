package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Labels that tie a workload to the Gateway API resources a targetRef can
// name. Istio's gateway deployments carry them.
const (
	GatewayNameLabel      = "gateway.networking.k8s.io/gateway-name"
	GatewayClassNameLabel = "gateway.networking.k8s.io/gateway-class-name"
)

// Workload is what policy selection knows about a workload: its namespace,
// name and labels, and the Services (or ServiceEntries) it serves as a
// waypoint, which targetRefs of kind Service and ServiceEntry select.
type Workload struct {
	Namespace string
	Name      string
	Labels    map[string]string
	Services  []string
}

// String returns "namespace/name".
func (w Workload) String() string { return w.Namespace + "/" + w.Name }

// ParseWorkload parses "namespace/name" and a "k=v,k2=v2" label list.
func ParseWorkload(nsName, labels string) (Workload, error) {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok || ns == "" || name == "" {
		return Workload{}, fmt.Errorf("policy: workload %q: want <namespace>/<name>", nsName)
	}
	w := Workload{Namespace: ns, Name: name, Labels: map[string]string{}}
	for _, kv := range strings.Split(labels, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return Workload{}, fmt.Errorf("policy: label %q: want key=value", kv)
		}
		w.Labels[k] = v
	}
	return w, nil
}

// MatchesLabels reports whether every label in selector has the same value
// in labels. An empty selector matches everything.
func MatchesLabels(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// AppliesTo reports whether the AuthorizationPolicy r applies to w, with
// Istio's selection rules:
//   - a policy applies only to workloads in its own namespace, except that a
//     policy in rootNamespace applies across the mesh;
//   - with targetRefs, a policy applies to the Gateway named (by the
//     gateway-name label, same namespace), the GatewayClass named (policy in
//     rootNamespace only), or the workloads serving the Service or
//     ServiceEntry named (same namespace);
//   - otherwise its selector picks workloads by labels, and no selector
//     picks every workload in scope.
func (r *Resource) AppliesTo(w Workload, rootNamespace string) bool {
	if r.Kind != KindAuthorizationPolicy {
		return false
	}
	ns := r.Meta.Namespace
	if ns != w.Namespace && ns != rootNamespace {
		return false
	}
	if refs := TargetRefs(r); len(refs) > 0 {
		for _, ref := range refs {
			if targetMatches(ref.Kind, ref.Name, ns, w, rootNamespace) {
				return true
			}
		}
		return false
	}
	return MatchesLabels(r.AuthorizationPolicy.GetSelector().GetMatchLabels(), w.Labels)
}

// TargetRef is one target of a policy.
type TargetRef struct {
	Kind string
	Name string
}

// TargetRefs returns the policy's targets from targetRef and targetRefs.
func TargetRefs(r *Resource) []TargetRef {
	if r.AuthorizationPolicy == nil {
		return nil
	}
	var refs []TargetRef
	if t := r.AuthorizationPolicy.GetTargetRef(); t != nil {
		refs = append(refs, TargetRef{Kind: t.GetKind(), Name: t.GetName()})
	}
	for _, t := range r.AuthorizationPolicy.GetTargetRefs() {
		refs = append(refs, TargetRef{Kind: t.GetKind(), Name: t.GetName()})
	}
	return refs
}

func targetMatches(kind, name, policyNS string, w Workload, rootNamespace string) bool {
	switch kind {
	case "Gateway":
		return policyNS == w.Namespace && w.Labels[GatewayNameLabel] == name
	case "GatewayClass":
		return policyNS == rootNamespace && w.Labels[GatewayClassNameLabel] == name
	case "Service", "ServiceEntry":
		return policyNS == w.Namespace && slices.Contains(w.Services, name)
	}
	return false
}
