package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/svidstore"
)

// Attestation selects whom the agent serves, and with which identity.
type Attestation string

const (
	// AttestationNone serves the agent's own SVID, obtained with its
	// token, to every caller of its sockets. It is for an agent beside one
	// workload (per-pod mode), whose socket no other workload can reach.
	AttestationNone Attestation = "none"
	// AttestationNode attributes every connection to the pod whose
	// process opened it, and serves it the SVID of that pod's service
	// account, which the agent asks of the CA on the workload's behalf. A
	// caller that cannot be attested gets nothing. It is for one agent per
	// node.
	AttestationNode Attestation = "node"
)

// ParseAttestation returns the Attestation named s; "" is AttestationNone.
func ParseAttestation(s string) (Attestation, error) {
	switch a := Attestation(s); a {
	case AttestationNone, AttestationNode:
		return a, nil
	case "":
		return AttestationNone, nil
	}
	return "", fmt.Errorf("agent: unknown attestation %q: want %s or %s", s, AttestationNone, AttestationNode)
}

// DefaultMaxIdentities is the default cap on the service accounts a node
// agent serves at once: more than the pods a kubelet runs by default (110).
const DefaultMaxIdentities = 256

// WorkloadAttestor attributes the process at the other end of a
// connection to its pod. *attest.Attestor implements it.
type WorkloadAttestor interface {
	Attest(ctx context.Context, p attest.PeerCred) (attest.Workload, error)
}

// PodSet says which service accounts have a running pod on this node. An
// informer on the node's pods (package attest/podindex) implements it.
type PodSet interface {
	// HasServiceAccount reports whether a running pod of this node runs
	// as service account namespace/name.
	HasServiceAccount(namespace, name string) bool
	// Changed returns a channel closed at the next change of the set of
	// service accounts with a running pod.
	Changed() <-chan struct{}
}

// A PodSet that also has a method Synced() bool reports through it whether
// it has listed the node's pods; the agent is not ready until it has.

// The reasons a caller is refused beyond attestation's own, as the reason
// label of castellan_agent_callers_refused_total.
const (
	refusedNoRunningPod = "no_running_pod"
	refusedIdentityCap  = "identity_cap"
	refusedNotRunning   = "agent_not_running"
)

type serviceAccount struct{ namespace, name string }

// identity is the SVID of one service account of the node.
type identity struct {
	rot    *rotator
	cancel context.CancelFunc
	done   chan struct{}
}

// identities holds a node agent's SVIDs, one per service account that
// has a running pod on the node and whose workloads asked. Each is
// created on first demand and kept fresh by its own rotator; it is
// withdrawn, and no longer renewed, as soon as the node runs no pod of its
// service account.
type identities struct {
	a *Agent

	mu       sync.Mutex
	ctx      context.Context // the agent's run; nil before and after it
	bundle   *svidstore.Bundle
	fed      *svidstore.Federated
	accounts map[serviceAccount]*identity
}

func newIdentities(a *Agent) *identities {
	return &identities{a: a, accounts: map[serviceAccount]*identity{}}
}

// get returns the store of namespace/name's SVID, creating it (and
// starting its rotation) on first demand.
func (s *identities) get(namespace, name string) (*svidstore.Store, error) {
	a := s.a
	s.mu.Lock()
	defer s.mu.Unlock()
	sa := serviceAccount{namespace, name}
	if id := s.accounts[sa]; id != nil {
		return id.rot.store, nil
	}
	switch {
	case s.ctx == nil || s.ctx.Err() != nil:
		return nil, a.refuse(refusedNotRunning, codes.Unavailable, "agent: not running")
	case !a.cfg.Pods.HasServiceAccount(namespace, name):
		// Checked under the lock that prune holds: a pod that goes away
		// after this check closes the PodSet's channel, and prune then
		// drops what this call creates.
		return nil, a.refuse(refusedNoRunningPod, codes.PermissionDenied,
			"agent: no running pod of service account %s/%s is on this node", namespace, name)
	case len(s.accounts) >= a.cfg.MaxIdentities:
		return nil, a.refuse(refusedIdentityCap, codes.ResourceExhausted,
			"agent: already serving %d service accounts, the limit (--max-identities); service account %s/%s gets no SVID", len(s.accounts), namespace, name)
	}
	id, err := spiffeid.FromSegments(a.cfg.TrustDomain, "ns", namespace, "sa", name)
	if err != nil {
		return nil, a.refuse(refusedNoRunningPod, codes.PermissionDenied, "agent: service account %s/%s makes no SPIFFE ID: %v", namespace, name, err)
	}
	store := svidstore.New()
	store.SetBundle(s.bundle)
	store.SetFederated(s.fed)
	ctx, cancel := context.WithCancel(s.ctx)
	ident := &identity{rot: newRotator(a, store, id, true), cancel: cancel, done: make(chan struct{})}
	s.accounts[sa] = ident
	a.log.Info("agent: serving a new identity", "spiffe_id", id.String(), "identities", len(s.accounts))
	go func() {
		defer close(ident.done)
		_ = ident.rot.run(ctx) // it returns nil, when ctx ends
	}()
	return store, nil
}

// run prunes identities whose service account has no running pod left on
// the node, whenever the PodSet changes, until ctx ends; then it stops
// every rotation. start must have been called with the same ctx.
func (s *identities) run(ctx context.Context) error {
	for {
		changed := s.a.cfg.Pods.Changed()
		s.prune()
		select {
		case <-ctx.Done():
			s.stop()
			return nil
		case <-changed:
		}
	}
}

// start lets get create identities for as long as ctx lasts.
func (s *identities) start(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
}

// prune withdraws the SVIDs of service accounts with no running pod left.
func (s *identities) prune() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sa, id := range s.accounts {
		if s.a.cfg.Pods.HasServiceAccount(sa.namespace, sa.name) {
			continue
		}
		delete(s.accounts, sa)
		id.cancel()
		id.rot.store.Withdraw(fmt.Sprintf("no running pod of service account %s/%s is left on this node", sa.namespace, sa.name))
		s.a.metrics.withdrawn.Inc()
		s.a.log.Info("agent: identity withdrawn: no running pod of its service account is left on the node",
			"spiffe_id", id.rot.id.String(), "identities", len(s.accounts))
	}
}

// stop ends every rotation and waits for them.
func (s *identities) stop() {
	s.mu.Lock()
	ids := s.accounts
	s.accounts = map[serviceAccount]*identity{}
	s.ctx = nil
	s.mu.Unlock()
	for _, id := range ids {
		id.cancel()
		<-id.done
		id.rot.store.Close()
	}
}

// setBundle gives every identity the new trust bundle.
func (s *identities) setBundle(b *svidstore.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle = b
	for _, id := range s.accounts {
		id.rot.store.SetBundle(b)
	}
}

// setFederated gives every identity the new federated bundles.
func (s *identities) setFederated(f *svidstore.Federated) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fed = f
	for _, id := range s.accounts {
		id.rot.store.SetFederated(f)
	}
}

// rotateNow renews every identity at once.
func (s *identities) rotateNow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.accounts {
		id.rot.rotateNow()
	}
}

// count returns the number of identities served, and how many of them
// hold a valid SVID.
func (s *identities) count() (total, valid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.accounts {
		if snap, _ := id.rot.store.Load(); snap.SVID != nil {
			valid++
		}
	}
	return len(s.accounts), valid
}

// soonestExpiry returns the earliest NotAfter of the SVIDs held, and false
// if none is.
func (s *identities) soonestExpiry() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var soonest time.Time
	for _, id := range s.accounts {
		if snap, _ := id.rot.store.Load(); snap.SVID != nil && (soonest.IsZero() || snap.SVID.NotAfter.Before(soonest)) {
			soonest = snap.SVID.NotAfter
		}
	}
	return soonest, !soonest.IsZero()
}

// resolve returns the store that serves the caller of ctx: the agent's own
// with AttestationNone; otherwise the one of the caller's service account,
// once the caller is attested to a running pod of this node. A caller that
// cannot be attested is refused with PermissionDenied saying why: it never
// gets the agent's identity or another workload's.
func (a *Agent) resolve(ctx context.Context) (*svidstore.Store, error) {
	if a.ids == nil {
		return a.store, nil
	}
	p, ok := attest.PeerFromContext(ctx)
	if !ok {
		return nil, a.refuse(string(attest.ReasonNoPeerCredentials), codes.PermissionDenied,
			"agent: the connection carries no peer credentials; the caller cannot be attested")
	}
	w, err := a.cfg.Attestor.Attest(ctx, p)
	if err != nil {
		reason, ok := attest.ReasonOf(err)
		if !ok {
			reason = attest.ReasonProcUnreadable
		}
		return nil, a.refuse(string(reason), codes.PermissionDenied, "agent: caller refused: %v", err)
	}
	return a.ids.get(w.Namespace, w.ServiceAccount)
}

// refuse counts a refused caller and returns the status it gets.
func (a *Agent) refuse(reason string, code codes.Code, format string, args ...any) error {
	a.metrics.refused.WithLabelValues(reason).Inc()
	return status.Errorf(code, format, args...)
}
