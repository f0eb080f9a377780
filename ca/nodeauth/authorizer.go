// Package nodeauth decides whether a node agent may obtain an SVID for a
// workload on its node: Istio's "impersonation" (the ImpersonatedIdentity
// metadata of a CSR request, sent by ztunnel and by Castellan's node
// agent).
//
// An agent may impersonate a service account only when all of these hold:
//
//   - the agent's own service account is a configured node agent;
//   - its token is bound to a pod, and that pod exists with the UID the
//     token names, is not being deleted, runs as the agent's service
//     account and is on a node;
//   - an active pod of the requested service account is on that same node.
//
// So a node agent can obtain the identities of the pods on its own node and
// no others, and a stolen agent token stops working as soon as its pod is
// gone, even while the token itself is still valid or its check is cached.
// Every lookup is a read of a local, informer-fed PodIndex.
package nodeauth

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/internal/dnsname"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
)

// DefaultNodeAgent is the service account of Castellan's node agent
// DaemonSet in deploy/.
const DefaultNodeAgent = "castellan-system/castellan-agent"

// ServiceAccount names a Kubernetes service account.
type ServiceAccount struct {
	Namespace, Name string
}

// String returns "namespace/name".
func (s ServiceAccount) String() string { return s.Namespace + "/" + s.Name }

// ParseServiceAccount parses "namespace/name". The namespace must be a
// DNS-1123 label and the name a DNS-1123 subdomain, as Kubernetes requires.
func ParseServiceAccount(s string) (ServiceAccount, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return ServiceAccount{}, fmt.Errorf("nodeauth: service account %q is not of the form namespace/name", s)
	}
	sa := ServiceAccount{Namespace: ns, Name: name}
	if err := sa.validate(); err != nil {
		return ServiceAccount{}, fmt.Errorf("nodeauth: service account %q: %w", s, err)
	}
	return sa, nil
}

func (s ServiceAccount) validate() error {
	if !dnsname.IsLabel(s.Namespace) {
		return fmt.Errorf("namespace %q is not a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)", s.Namespace)
	}
	if !dnsname.IsSubdomain(s.Name) {
		return fmt.Errorf("name %q is not a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit)", s.Name)
	}
	return nil
}

// TargetServiceAccount returns the service account named by a SPIFFE ID of
// the form spiffe://<td>/ns/<namespace>/sa/<name>, the only identities the
// CA issues.
func TargetServiceAccount(td spiffeid.TrustDomain, id spiffeid.ID) (ServiceAccount, error) {
	if id.IsZero() {
		return ServiceAccount{}, errors.New("no SPIFFE ID")
	}
	if id.TrustDomain() != td {
		return ServiceAccount{}, fmt.Errorf("%s is not in the trust domain %s", id, td.Name())
	}
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	var sa ServiceAccount
	if ok {
		sa.Namespace, rest, ok = strings.Cut(rest, "/")
	}
	if ok {
		sa.Name, ok = strings.CutPrefix(rest, "sa/")
	}
	if !ok || strings.Contains(sa.Name, "/") {
		return ServiceAccount{}, fmt.Errorf("%s is not of the form spiffe://%s/ns/<namespace>/sa/<service account>", id, td.Name())
	}
	if err := sa.validate(); err != nil {
		return ServiceAccount{}, fmt.Errorf("%s: %w", id, err)
	}
	return sa, nil
}

// Pods is what an Authorizer reads about pods. PodIndex implements it.
type Pods interface {
	// Synced reports whether the pods are completely listed, so that a
	// missing pod is one that does not exist.
	Synced() bool
	// Pod returns the pod namespace/name.
	Pod(namespace, name string) (Pod, bool)
	// ActiveOnNode reports whether an active pod of sa is on node.
	ActiveOnNode(node string, sa ServiceAccount) bool
}

// Config configures an Authorizer.
type Config struct {
	// TrustDomain is the CA's trust domain; targets outside it are
	// refused. Required.
	TrustDomain spiffeid.TrustDomain
	// NodeAgents are the service accounts allowed to impersonate.
	// Required: an Authorizer with none would refuse everything.
	NodeAgents []ServiceAccount
	// Pods are the cluster's pods. Required.
	Pods Pods
}

// Authorizer decides impersonation requests. It is safe for concurrent use.
type Authorizer struct {
	td     spiffeid.TrustDomain
	agents map[ServiceAccount]struct{}
	pods   Pods
}

// Ready reports whether the pods are listed, so that node agents can be
// authorized; the CA's /readyz reports it.
func (a *Authorizer) Ready() (bool, string) {
	if !a.pods.Synced() {
		return false, "the pod list for node-agent authorization is not synced yet"
	}
	return true, "ok"
}

// New returns an Authorizer for cfg.
func New(cfg Config) (*Authorizer, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("nodeauth: no trust domain configured")
	case len(cfg.NodeAgents) == 0:
		return nil, errors.New("nodeauth: no node agent service account configured")
	case cfg.Pods == nil:
		return nil, errors.New("nodeauth: no pod index configured")
	}
	a := &Authorizer{td: cfg.TrustDomain, agents: make(map[ServiceAccount]struct{}, len(cfg.NodeAgents)), pods: cfg.Pods}
	for _, sa := range cfg.NodeAgents {
		if err := sa.validate(); err != nil {
			return nil, fmt.Errorf("nodeauth: node agent %s: %w", sa, err)
		}
		a.agents[sa] = struct{}{}
	}
	return a, nil
}

// AuthorizeImpersonation returns nil when caller, a proven service account,
// may have an SVID for target, and otherwise an *Error saying why not. The
// checks run cheapest first; the pod checks are reads of the local index.
func (a *Authorizer) AuthorizeImpersonation(_ context.Context, caller authn.Caller, target spiffeid.ID) error {
	agent := ServiceAccount{Namespace: caller.Namespace, Name: caller.ServiceAccount}
	if _, ok := a.agents[agent]; !ok {
		return errorf(ReasonNotNodeAgent, "%s is not a node agent service account; only node agents may impersonate", agent)
	}
	want, err := TargetServiceAccount(a.td, target)
	if err != nil {
		return errorf(ReasonInvalidTarget, "impersonated identity: %v", err)
	}
	if caller.PodName == "" || caller.PodUID == "" {
		return errorf(ReasonTokenNotPodBound, "node agent %s presented a token bound to no pod; use a projected service account token, which names the agent's pod", agent)
	}
	if !a.pods.Synced() {
		return errorf(ReasonPodsUnavailable, "the CA has not yet listed the cluster's pods; retry")
	}
	pod, ok := a.pods.Pod(caller.Namespace, caller.PodName)
	switch {
	case !ok:
		return errorf(ReasonAgentPodGone, "node agent pod %s/%s, named by the token, does not exist", caller.Namespace, caller.PodName)
	case pod.UID != caller.PodUID:
		return errorf(ReasonAgentPodGone, "node agent pod %s/%s has UID %s, not the %s the token is bound to (the pod was replaced)", caller.Namespace, caller.PodName, pod.UID, caller.PodUID)
	case pod.Deleting:
		return errorf(ReasonAgentPodGone, "node agent pod %s/%s is being deleted", caller.Namespace, caller.PodName)
	case pod.Phase == corev1.PodSucceeded || pod.Phase == corev1.PodFailed:
		return errorf(ReasonAgentPodGone, "node agent pod %s/%s has terminated (%s)", caller.Namespace, caller.PodName, pod.Phase)
	case pod.ServiceAccount != caller.ServiceAccount:
		return errorf(ReasonAgentPodMismatch, "node agent pod %s/%s runs as service account %s, not %s", caller.Namespace, caller.PodName, pod.ServiceAccount, caller.ServiceAccount)
	case pod.NodeName == "":
		return errorf(ReasonAgentPodMismatch, "node agent pod %s/%s is not scheduled to a node", caller.Namespace, caller.PodName)
	case caller.NodeName != "" && caller.NodeName != pod.NodeName:
		return errorf(ReasonAgentPodMismatch, "node agent pod %s/%s is on node %s, but its token names node %s", caller.Namespace, caller.PodName, pod.NodeName, caller.NodeName)
	}
	if !a.pods.ActiveOnNode(pod.NodeName, want) {
		return errorf(ReasonNoPodOnNode, "no pod of service account %s is running on node %s, where node agent pod %s/%s is", want, pod.NodeName, caller.Namespace, caller.PodName)
	}
	return nil
}

// Reason classifies a refused impersonation. It is a metric label, so the
// set is small and fixed.
type Reason string

// The reasons AuthorizeImpersonation reports.
const (
	// ReasonNotNodeAgent: the caller's service account is not a
	// configured node agent.
	ReasonNotNodeAgent Reason = "not_node_agent"
	// ReasonInvalidTarget: the requested identity is not a SPIFFE ID of
	// the form /ns/<namespace>/sa/<name> in the CA's trust domain.
	ReasonInvalidTarget Reason = "invalid_target"
	// ReasonTokenNotPodBound: the agent's token names no pod.
	ReasonTokenNotPodBound Reason = "token_not_pod_bound"
	// ReasonAgentPodGone: the pod the token is bound to does not exist,
	// was replaced by another of the same name, is being deleted or has
	// terminated.
	ReasonAgentPodGone Reason = "agent_pod_not_found"
	// ReasonAgentPodMismatch: the pod exists but does not run as the
	// agent's service account, is not on a node, or is on another node
	// than the token says.
	ReasonAgentPodMismatch Reason = "agent_pod_mismatch"
	// ReasonNoPodOnNode: no active pod of the requested service account
	// is on the agent's node.
	ReasonNoPodOnNode Reason = "no_pod_on_node"
	// ReasonPodsUnavailable: the pod index has not synced yet; the caller
	// may retry.
	ReasonPodsUnavailable Reason = "pods_unavailable"
)

// Reasons returns every Reason, for metrics that show each from the start.
func Reasons() []Reason {
	return []Reason{ReasonNotNodeAgent, ReasonInvalidTarget, ReasonTokenNotPodBound, ReasonAgentPodGone,
		ReasonAgentPodMismatch, ReasonNoPodOnNode, ReasonPodsUnavailable}
}

// Error is a refused impersonation with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return "nodeauth: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

func errorf(reason Reason, format string, args ...any) error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of err, or "" when err is not an *Error.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
