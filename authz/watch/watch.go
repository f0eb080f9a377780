// Package watch feeds an authz engine from a live cluster: client-go
// informers on the security.istio.io AuthorizationPolicy and
// PeerAuthentication custom resources and, optionally, on Pods as
// workloads. Changes reach the engine as they happen, without a restart.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/authz/policy"
)

// The resources watched.
var (
	AuthorizationPolicies = schema.GroupVersionResource{Group: policy.Group, Version: "v1", Resource: "authorizationpolicies"}
	PeerAuthentications   = schema.GroupVersionResource{Group: policy.Group, Version: "v1", Resource: "peerauthentications"}
	Pods                  = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// Sink receives policy changes. *authz.Engine implements it.
type Sink interface {
	// Apply adds or replaces a policy: a valid one, or the fail-closed
	// form of an invalid one.
	Apply(r *policy.Resource) (int, error)
	// Delete removes a policy.
	Delete(key policy.Key) int
	// Reject reports a policy that could not be read at all; its previous
	// version, if any, stays in force.
	Reject(key policy.Key, err error)
}

// WorkloadSink receives workload changes. *authz.Engine implements it.
type WorkloadSink interface {
	SetWorkload(w policy.Workload)
	DeleteWorkload(namespace, name string)
}

// Config configures a Source.
type Config struct {
	// Client reads the policies. Required.
	Client dynamic.Interface
	// Namespace limits the watch to one namespace; empty means all.
	Namespace string
	// Resync is the informers' resync period; zero means none.
	Resync time.Duration
	// Logger receives reports of rejected objects; nil means
	// slog.Default().
	Logger *slog.Logger

	// Pods, when set together with Workloads, also watches Pods (their
	// metadata only) and registers each as a workload.
	Pods      metadata.Interface
	Workloads WorkloadSink
}

// Source runs the informers.
type Source struct {
	cfg  Config
	sink Sink
	log  *slog.Logger

	mu     sync.Mutex
	synced []cache.InformerSynced
}

// New returns a Source that feeds sink.
func New(cfg Config, sink Sink) (*Source, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("watch: Config.Client is required")
	case sink == nil:
		return nil, errors.New("watch: a sink is required")
	case (cfg.Pods == nil) != (cfg.Workloads == nil):
		return nil, errors.New("watch: Config.Pods and Config.Workloads go together")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Source{cfg: cfg, sink: sink, log: log}, nil
}

// Run starts the informers, waits for their initial lists and then keeps
// the sink up to date until ctx ends. It returns an error if the initial
// sync fails; after ctx ends it returns nil.
func (s *Source) Run(ctx context.Context) error {
	var synced []cache.InformerSynced
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.cfg.Client, s.cfg.Resync, s.cfg.Namespace, nil)
	defer factory.Shutdown()
	for _, gvr := range []schema.GroupVersionResource{AuthorizationPolicies, PeerAuthentications} {
		inf := factory.ForResource(gvr).Informer()
		if _, err := inf.AddEventHandler(s.policyHandler()); err != nil {
			return fmt.Errorf("watch: %s: %w", gvr.Resource, err)
		}
		synced = append(synced, inf.HasSynced)
	}
	var podFactory metadatainformer.SharedInformerFactory
	if s.cfg.Pods != nil {
		podFactory = metadatainformer.NewFilteredSharedInformerFactory(s.cfg.Pods, s.cfg.Resync, s.cfg.Namespace, nil)
		defer podFactory.Shutdown()
		inf := podFactory.ForResource(Pods).Informer()
		if _, err := inf.AddEventHandler(s.podHandler()); err != nil {
			return fmt.Errorf("watch: pods: %w", err)
		}
		synced = append(synced, inf.HasSynced)
		podFactory.Start(ctx.Done())
	}
	s.mu.Lock()
	s.synced = synced
	s.mu.Unlock()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("watch: informers did not sync")
	}
	s.log.Info("watch: policies synced", "namespace", s.cfg.Namespace)
	<-ctx.Done()
	return nil
}

func (s *Source) policyHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: s.upsert,
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*unstructured.Unstructured)
			n, ok2 := newObj.(*unstructured.Unstructured)
			if ok1 && ok2 && o.GetResourceVersion() != "" && o.GetResourceVersion() == n.GetResourceVersion() {
				return // a resync: nothing changed
			}
			s.upsert(newObj)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				return
			}
			s.sink.Delete(keyOf(u))
		},
	}
}

func keyOf(u *unstructured.Unstructured) policy.Key {
	return policy.Key{Kind: policy.Kind(u.GetKind()), Namespace: u.GetNamespace(), Name: u.GetName()}
}

func (s *Source) upsert(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	key := keyOf(u)
	data, err := u.MarshalJSON()
	if err != nil {
		s.sink.Reject(key, fmt.Errorf("watch: encoding %s: %w", key, err))
		return
	}
	r, err := policy.DecodeObject(data, policy.Origin{})
	switch {
	case r != nil:
		// An invalid policy comes in its fail-closed form. Its problems,
		// like an unsupported CUSTOM action, are recorded by the sink.
		_, _ = s.sink.Apply(r)
	case err != nil:
		s.log.Warn("watch: policy cannot be identified; any previous version stays in force", "policy", key.String(), "error", err)
		s.sink.Reject(key, err)
	default:
		// Not a kind we handle (cannot happen for these resources).
	}
}

func (s *Source) podHandler() cache.ResourceEventHandler {
	set := func(obj any) {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return
		}
		s.cfg.Workloads.SetWorkload(policy.Workload{Namespace: m.Namespace, Name: m.Name, Labels: m.Labels})
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: set,
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*metav1.PartialObjectMetadata)
			n, ok2 := newObj.(*metav1.PartialObjectMetadata)
			if ok1 && ok2 && o.ResourceVersion != "" && o.ResourceVersion == n.ResourceVersion {
				return
			}
			set(newObj)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
				s.cfg.Workloads.DeleteWorkload(m.Namespace, m.Name)
			}
		},
	}
}

// HasSynced reports whether the informers have delivered their initial
// lists.
func (s *Source) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.synced {
		if !f() {
			return false
		}
	}
	return len(s.synced) > 0
}
