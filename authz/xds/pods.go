package xds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/authz/policy"
)

// WorkloadSink receives pods as workloads. *authz.Engine implements it.
type WorkloadSink interface {
	SetWorkload(w policy.Workload)
	DeleteWorkload(namespace, name string)
}

// PodWatcher watches pods with a client-go informer. It registers every
// pod as a workload (namespace, name and labels) and answers which
// service account a pod runs as.
type PodWatcher struct {
	client    kubernetes.Interface
	namespace string
	sink      WorkloadSink

	mu     sync.RWMutex
	sa     map[workloadKey]string
	synced cache.InformerSynced
}

// NewPodWatcher returns a PodWatcher of the pods in namespace (all when
// empty) that feeds sink.
func NewPodWatcher(client kubernetes.Interface, namespace string, sink WorkloadSink) (*PodWatcher, error) {
	if client == nil || sink == nil {
		return nil, errors.New("xds: a client and a sink are required")
	}
	return &PodWatcher{client: client, namespace: namespace, sink: sink, sa: map[workloadKey]string{}}, nil
}

// ServiceAccount implements Pods.
func (p *PodWatcher) ServiceAccount(namespace, name string) (string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	sa, ok := p.sa[workloadKey{namespace, name}]
	return sa, ok
}

// HasSynced reports whether the initial list has been delivered.
func (p *PodWatcher) HasSynced() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.synced != nil && p.synced()
}

// Run watches until ctx ends. It returns an error if the initial list
// fails.
func (p *PodWatcher) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(p.client, 0, informers.WithNamespace(p.namespace),
		informers.WithTransform(trimPod))
	defer factory.Shutdown()
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    p.set,
		UpdateFunc: func(_, n any) { p.set(n) },
		DeleteFunc: p.delete,
	}); err != nil {
		return fmt.Errorf("xds: pods: %w", err)
	}
	p.mu.Lock()
	p.synced = inf.HasSynced
	p.mu.Unlock()
	factory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("xds: pod informer did not sync")
	}
	<-ctx.Done()
	return nil
}

// trimPod keeps only what is used, so that a large cluster's pods cost
// little memory.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{}
	out.Name, out.Namespace, out.Labels, out.ResourceVersion, out.UID = pod.Name, pod.Namespace, pod.Labels, pod.ResourceVersion, pod.UID
	out.Spec.ServiceAccountName = pod.Spec.ServiceAccountName
	return out, nil
}

func (p *PodWatcher) set(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	p.mu.Lock()
	p.sa[workloadKey{pod.Namespace, pod.Name}] = sa
	p.mu.Unlock()
	p.sink.SetWorkload(policy.Workload{Namespace: pod.Namespace, Name: pod.Name, Labels: pod.Labels})
}

func (p *PodWatcher) delete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	p.mu.Lock()
	delete(p.sa, workloadKey{pod.Namespace, pod.Name})
	p.mu.Unlock()
	p.sink.DeleteWorkload(pod.Namespace, pod.Name)
}
