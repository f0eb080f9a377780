package authz

import (
	"github.com/castellan-mesh/castellan/authz/policy"
)

// This file holds the workload indexes that find, without scanning the
// mesh, the workloads a policy applies to.

func (e *Engine) indexWorkload(wk workloadKey, w policy.Workload) {
	e.updateWorkloadIndexes(wk, w, true)
}

func (e *Engine) unindexWorkload(wk workloadKey, w policy.Workload) {
	e.updateWorkloadIndexes(wk, w, false)
}

// updateWorkloadIndexes adds wk under every key of w (add), or removes it.
func (e *Engine) updateWorkloadIndexes(wk workloadKey, w policy.Workload, add bool) {
	updateSet(e.byNS, w.Namespace, wk, add)
	for k, v := range w.Labels {
		updateSet(e.byLabel, labelKey{w.Namespace, k, v}, wk, add)
		updateSet(e.byLabel, labelKey{"", k, v}, wk, add)
	}
	for _, s := range w.Services {
		updateSet(e.byService, labelKey{w.Namespace, "", s}, wk, add)
	}
}

// authzTargets returns the registered workloads the AuthorizationPolicy
// applies to. Candidates come from the indexes; AppliesTo has the last word.
func (e *Engine) authzTargets(ent *authzEntry) map[workloadKey]struct{} {
	out := map[workloadKey]struct{}{}
	if ent == nil {
		return out
	}
	r := ent.res
	ns := r.Meta.Namespace
	mesh := ns == e.root
	consider := func(set map[workloadKey]struct{}) {
		for wk := range set {
			if r.AppliesTo(e.workloads[wk].w, e.root) {
				out[wk] = struct{}{}
			}
		}
	}
	if refs := policy.TargetRefs(r); len(refs) > 0 {
		for _, ref := range refs {
			switch ref.Kind {
			case "Gateway":
				consider(e.byLabel[labelKey{ns, policy.GatewayNameLabel, ref.Name}])
			case "GatewayClass":
				if mesh {
					consider(e.byLabel[labelKey{"", policy.GatewayClassNameLabel, ref.Name}])
				}
			case "Service", "ServiceEntry":
				consider(e.byService[labelKey{ns, "", ref.Name}])
			}
		}
		return out
	}
	e.bySelector(ns, mesh, r.AuthorizationPolicy.GetSelector().GetMatchLabels(), consider)
	return out
}

// peerTargets returns the registered workloads whose mTLS settings the
// PeerAuthentication can affect.
func (e *Engine) peerTargets(r *policy.Resource) map[workloadKey]struct{} {
	out := map[workloadKey]struct{}{}
	if r == nil {
		return out
	}
	ns := r.Meta.Namespace
	labels := r.PeerAuthentication.GetSelector().GetMatchLabels()
	if ns == e.root && len(labels) > 0 {
		return out // ignored: selector policies in the root namespace
	}
	e.bySelector(ns, ns == e.root, labels, func(set map[workloadKey]struct{}) {
		for wk := range set {
			w := e.workloads[wk].w
			if (ns == e.root || w.Namespace == ns) && policy.MatchesLabels(labels, w.Labels) {
				out[wk] = struct{}{}
			}
		}
	})
	return out
}

// bySelector passes consider the candidate workloads of a label selector
// in namespace ns, or in every namespace when mesh is set: the smallest
// posting list among the selector's labels, or the whole scope when the
// selector is empty.
func (e *Engine) bySelector(ns string, mesh bool, labels map[string]string, consider func(map[workloadKey]struct{})) {
	if len(labels) == 0 {
		if mesh {
			for wns := range e.byNS {
				consider(e.byNS[wns])
			}
			return
		}
		consider(e.byNS[ns])
		return
	}
	scope := ns
	if mesh {
		scope = ""
	}
	var best map[workloadKey]struct{}
	first := true
	for k, v := range labels {
		set := e.byLabel[labelKey{scope, k, v}]
		if first || len(set) < len(best) {
			best, first = set, false
		}
	}
	consider(best)
}

// updateSet adds v to the set idx[k] (add), or removes it; an emptied set
// is dropped, so that the index holds no key without members.
func updateSet[K, V comparable](idx map[K]map[V]struct{}, k K, v V, add bool) {
	s, ok := idx[k]
	switch {
	case add && !ok:
		idx[k] = map[V]struct{}{v: {}}
	case add:
		s[v] = struct{}{}
	case ok:
		delete(s, v)
		if len(s) == 0 {
			delete(idx, k)
		}
	}
}
