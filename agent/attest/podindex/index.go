// Package podindex keeps the pods bound to one node, for workload
// attestation: a client-go informer on the pods whose spec.nodeName is the
// node, reduced to the few fields attestation needs.
//
// Why an informer on the API server and not the kubelet's API: the
// kubelet's read-only port is disabled on current clusters, and its
// authenticated port (10250) needs nodes/proxy access, which lets the
// holder run commands in every pod of the node; a watch on pods needs only
// "get, list, watch pods", restricted by a field selector to one node.
// A watch also tells the agent within a moment that a pod was deleted,
// where the kubelet's API would have to be polled. The API server is the
// authority on a pod's service account; the kubelet's copy is derived
// from it.
//
// Memory and binary stay small: pods are decoded from the API server's
// JSON into a type that has only the fields attestation reads (name,
// namespace, UID, deletion timestamp, node, service account, phase), and
// the informer's transform drops the rest of the metadata before a pod is
// stored. The core/v1 API types are not linked.
package podindex

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/internal/broadcast"
)

// ServiceAccount names a Kubernetes service account.
type ServiceAccount struct {
	Namespace string
	Name      string
}

// Snapshot is the state of an Index at one moment. Its fields are shared
// and must not be modified.
type Snapshot struct {
	// ServiceAccounts holds, for each service account with at least one
	// pod in phase Running on the node (being deleted or not: see
	// attest.Pod.Serving), the number of such pods.
	ServiceAccounts map[ServiceAccount]int
	// Synced is true once the informer has listed the node's pods.
	Synced bool
	// Generation grows by one whenever the set of service accounts in
	// ServiceAccounts, or Synced, changes.
	Generation uint64
}

// Has reports whether sa has a running pod on the node.
func (s Snapshot) Has(sa ServiceAccount) bool { return s.ServiceAccounts[sa] > 0 }

// Index holds the pods bound to one node. It implements attest.PodLookup.
// It is safe for concurrent use.
type Index struct {
	node     string
	log      *slog.Logger
	informer cache.Controller

	mu      sync.Mutex
	pods    map[string]attest.Pod // by UID
	snap    Snapshot
	changed broadcast.Signal // notified and taken under mu: paired with snap
	started bool
}

// Option configures an Index.
type Option interface {
	apply(*Index)
}

type optionFunc func(*Index)

func (f optionFunc) apply(x *Index) { f(x) }

// WithLogger sets the logger of the informer (failed lists and watches);
// the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(x *Index) { x.log = l })
}

// New returns an Index of the pods bound to nodeName, read from the API
// server cfg names, with "list" and "watch" on pods (restricted to the
// node by a field selector). Start runs it.
func New(cfg *rest.Config, nodeName string, opts ...Option) (*Index, error) {
	if cfg == nil {
		return nil, errors.New("podindex: a client configuration is required")
	}
	if nodeName == "" {
		return nil, errors.New("podindex: a node name is required")
	}
	client, err := newRESTClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("podindex: %w", err)
	}
	sel := fields.OneTermEqualSelector("spec.nodeName", nodeName)
	lw := cache.NewListWatchFromClient(client, "pods", metav1.NamespaceAll, sel)
	return newIndex(lw, nodeName, opts...), nil
}

func newIndex(lw cache.ListerWatcher, nodeName string, opts ...Option) *Index {
	x := &Index{
		node: nodeName,
		log:  slog.Default(),
		pods: map[string]attest.Pod{},
		snap: Snapshot{ServiceAccounts: map[ServiceAccount]int{}},
	}
	for _, o := range opts {
		o.apply(x)
	}
	logger := logr.FromSlogHandler(x.log.Handler())
	_, x.informer = cache.NewInformerWithOptions(cache.InformerOptions{
		Logger:        &logger,
		ListerWatcher: lw,
		ObjectType:    &pod{},
		Handler: cache.ResourceEventHandlerDetailedFuncs{
			AddFunc:    func(obj any, _ bool) { x.set(obj) },
			UpdateFunc: func(_, obj any) { x.set(obj) },
			DeleteFunc: x.delete,
		},
		Transform: slim,
	})
	return x
}

// Start runs the informer until ctx ends. It returns at once; call it
// once.
func (x *Index) Start(ctx context.Context) {
	x.mu.Lock()
	if x.started {
		x.mu.Unlock()
		return
	}
	x.started = true
	x.mu.Unlock()
	go x.informer.RunWithContext(ctx)
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), x.informer.HasSynced) {
			x.mu.Lock()
			x.snap.Synced = true
			x.notifyLocked()
			x.mu.Unlock()
		}
	}()
}

// WaitForSync blocks until the informer has listed the node's pods, or ctx
// ends. Attestation before that refuses pods not yet listed.
func (x *Index) WaitForSync(ctx context.Context) error {
	for {
		snap, changed := x.Load()
		if snap.Synced {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("podindex: pods of node %s not listed: %w", x.node, context.Cause(ctx))
		}
	}
}

// PodByUID returns the pod of the node with that UID.
func (x *Index) PodByUID(uid string) (attest.Pod, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, ok := x.pods[uid]
	return p, ok
}

// HasServiceAccount reports whether a running pod of the node runs as
// service account namespace/name.
func (x *Index) HasServiceAccount(namespace, name string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.snap.ServiceAccounts[ServiceAccount{namespace, name}] > 0
}

// Load returns the current snapshot and a channel closed at its next
// change. A subscriber waits on the channel and calls Load again.
func (x *Index) Load() (Snapshot, <-chan struct{}) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.snap, x.changed.C()
}

// slim drops what the index does not read from a pod's metadata
// (labels, annotations, managed fields...), before the informer stores it.
func slim(obj any) (any, error) {
	p, ok := obj.(*pod)
	if !ok {
		return obj, nil // a tombstone; delete unwraps it
	}
	return &pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   p.Spec,
		Status: p.Status,
	}, nil
}

func toPod(p *pod) attest.Pod {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return attest.Pod{
		UID:            string(p.UID),
		Namespace:      p.Namespace,
		Name:           p.Name,
		ServiceAccount: sa,
		NodeName:       p.Spec.NodeName,
		Phase:          attest.PodPhase(p.Status.Phase),
		Terminating:    p.DeletionTimestamp != nil,
	}
}

func (x *Index) set(obj any) {
	p, ok := obj.(*pod)
	if !ok {
		return
	}
	np := toPod(p)
	x.mu.Lock()
	defer x.mu.Unlock()
	old, had := x.pods[np.UID]
	if np.NodeName != x.node {
		// Not ours (the selector should have kept it out); forget it.
		delete(x.pods, np.UID)
	} else {
		x.pods[np.UID] = np
	}
	x.updateLocked(old, had, np, np.NodeName == x.node)
}

func (x *Index) delete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*pod)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	old, had := x.pods[string(p.UID)]
	delete(x.pods, string(p.UID))
	x.updateLocked(old, had, attest.Pod{}, false)
}

// updateLocked moves the service-account counts from old (if had) to
// cur (if has), and notifies when the set of service accounts changes.
func (x *Index) updateLocked(old attest.Pod, had bool, cur attest.Pod, has bool) {
	var dec, inc ServiceAccount
	decOK := had && old.Serving()
	incOK := has && cur.Serving()
	if decOK {
		dec = ServiceAccount{old.Namespace, old.ServiceAccount}
	}
	if incOK {
		inc = ServiceAccount{cur.Namespace, cur.ServiceAccount}
	}
	if decOK == incOK && dec == inc {
		return
	}
	// Snapshots are shared: copy before changing.
	sas := maps.Clone(x.snap.ServiceAccounts)
	setChanged := false
	if decOK {
		sas[dec]--
		if sas[dec] <= 0 {
			delete(sas, dec)
			setChanged = true
		}
	}
	if incOK {
		if sas[inc] == 0 {
			setChanged = true
		}
		sas[inc]++
	}
	x.snap.ServiceAccounts = sas
	if setChanged {
		x.notifyLocked()
	}
}

func (x *Index) notifyLocked() {
	x.snap.Generation++
	x.changed.Notify()
}

var _ attest.PodLookup = (*Index)(nil)
