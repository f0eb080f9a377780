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
// Memory stays small: the informer's transform keeps only name,
// namespace, UID, deletion timestamp, node, service account and phase of
// each pod before it is stored.
package podindex

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/agent/attest"
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
	// running pod on the node (phase Running, not being deleted), the
	// number of such pods.
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
	lw       cache.ListerWatcher
	log      *slog.Logger
	informer cache.Controller

	mu      sync.Mutex
	pods    map[string]attest.Pod // by UID
	snap    Snapshot
	changed chan struct{}
	started bool
}

// Option configures an Index.
type Option interface {
	apply(*Index)
}

type optionFunc func(*Index)

func (f optionFunc) apply(x *Index) { f(x) }

// WithLogger sets the logger; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(x *Index) { x.log = l })
}

// New returns an Index of the pods bound to nodeName, read through client,
// a REST client for the core/v1 API group: NewClient makes one from a
// rest.Config, and a clientset's CoreV1().RESTClient() is one too. Start
// runs it.
func New(client rest.Interface, nodeName string, opts ...Option) (*Index, error) {
	if client == nil {
		return nil, errors.New("podindex: a client is required")
	}
	if nodeName == "" {
		return nil, errors.New("podindex: a node name is required")
	}
	sel := fields.OneTermEqualSelector("spec.nodeName", nodeName)
	lw := cache.NewListWatchFromClient(client, "pods", metav1.NamespaceAll, sel)
	return newIndex(lw, nodeName, opts...), nil
}

func newIndex(lw cache.ListerWatcher, nodeName string, opts ...Option) *Index {
	x := &Index{
		node:    nodeName,
		lw:      lw,
		log:     slog.Default(),
		pods:    map[string]attest.Pod{},
		snap:    Snapshot{ServiceAccounts: map[ServiceAccount]int{}},
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o.apply(x)
	}
	_, x.informer = cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Pod{},
		Handler: cache.ResourceEventHandlerDetailedFuncs{
			AddFunc:    func(obj any, _ bool) { x.set(obj) },
			UpdateFunc: func(_, obj any) { x.set(obj) },
			DeleteFunc: x.delete,
		},
		Transform: slim,
	})
	return x
}

// NewClient returns a REST client for the core/v1 API group that decodes
// only core/v1 objects: enough for New, without linking every API group's
// types as a clientset does.
func NewClient(cfg *rest.Config) (rest.Interface, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("podindex: %w", err)
	}
	metav1.AddToGroupVersion(scheme, corev1.SchemeGroupVersion)
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "castellan-agent"
	}
	client, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("podindex: %w", err)
	}
	return client, nil
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
	return x.snap, x.changed
}

// slim reduces a pod to what the index keeps, before the informer stores
// it.
func slim(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone; delete unwraps it
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

func toPod(p *corev1.Pod) attest.Pod {
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
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	pod := toPod(p)
	x.mu.Lock()
	defer x.mu.Unlock()
	old, had := x.pods[pod.UID]
	if pod.NodeName != x.node {
		// Not ours (the selector should have kept it out); forget it.
		delete(x.pods, pod.UID)
	} else {
		x.pods[pod.UID] = pod
	}
	x.updateLocked(old, had, pod, pod.NodeName == x.node)
}

func (x *Index) delete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
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
// pod (if has), and notifies when the set of service accounts changes.
func (x *Index) updateLocked(old attest.Pod, had bool, pod attest.Pod, has bool) {
	var dec, inc ServiceAccount
	decOK := had && old.Running()
	incOK := has && pod.Running()
	if decOK {
		dec = ServiceAccount{old.Namespace, old.ServiceAccount}
	}
	if incOK {
		inc = ServiceAccount{pod.Namespace, pod.ServiceAccount}
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
	close(x.changed)
	x.changed = make(chan struct{})
}

var _ attest.PodLookup = (*Index)(nil)
