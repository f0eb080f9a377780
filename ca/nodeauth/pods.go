package nodeauth

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"unique"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/internal/promreg"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Pod is what the CA keeps of a Kubernetes pod: enough to tell which
// service accounts run on which node, and nothing else.
type Pod struct {
	Namespace, Name string
	UID             string
	// NodeName is spec.nodeName: empty until the pod is scheduled.
	NodeName string
	// ServiceAccount is spec.serviceAccountName.
	ServiceAccount string
	Phase          corev1.PodPhase
	// Deleting is true once the pod has a deletion timestamp: it may
	// still run for its grace period.
	Deleting bool
}

// Active reports whether the pod is placed on a node and has not
// terminated: its phase is Pending or Running. A pending pod counts because
// init containers and native sidecars (Istio's proxy among them) fetch
// their certificate before the pod's phase becomes Running.
func (p Pod) Active() bool {
	return p.NodeName != "" && (p.Phase == corev1.PodPending || p.Phase == corev1.PodRunning)
}

// PodIndex is a local, informer-fed copy of the cluster's pods, stripped to
// the fields of Pod and indexed by node and service account, so that an
// authorization decision costs map reads and no API call. It is safe for
// concurrent use once created; Run feeds it.
type PodIndex struct {
	informer cache.SharedIndexInformer
	synced   atomic.Bool
	running  atomic.Bool
}

var (
	_ Pods              = (*PodIndex)(nil)
	_ authn.ObjectIndex = (*PodIndex)(nil)
)

// PodIndexConfig configures a PodIndex.
type PodIndexConfig struct {
	// Client lists and watches pods in every namespace. Required. The
	// CA's identity needs get, list and watch on pods cluster-wide.
	Client kubernetes.Interface
	// Registerer receives castellan_ca_pod_index_pods. Nil means it is
	// not exported.
	Registerer prometheus.Registerer
}

// indexNodeServiceAccount indexes active pods by node and service account.
const indexNodeServiceAccount = "node-serviceaccount"

// NewPodIndex returns an index of the pods cfg.Client can see. It is empty
// and not synced until Run has listed the pods.
func NewPodIndex(cfg PodIndexConfig) (*PodIndex, error) {
	if cfg.Client == nil {
		return nil, errors.New("nodeauth: pod index needs a Kubernetes client")
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTransform(stripPod))
	inf := factory.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{indexNodeServiceAccount: nodeServiceAccountIndex}); err != nil {
		return nil, fmt.Errorf("nodeauth: pod index: %w", err)
	}
	x := &PodIndex{informer: inf}
	f := promreg.With(cfg.Registerer)
	f.GaugeFunc("castellan_ca_pod_index_pods", "Pods in the CA's local pod index (used to authorize node agents).",
		func() float64 { return float64(len(inf.GetStore().ListKeys())) })
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("nodeauth: registering the pod index metric: %w", err)
	}
	return x, nil
}

// Run lists and watches pods until ctx ends. A PodIndex runs once.
func (x *PodIndex) Run(ctx context.Context) error {
	if !x.running.CompareAndSwap(false, true) {
		return errors.New("nodeauth: pod index Run called twice")
	}
	x.informer.RunWithContext(ctx)
	return nil
}

// Synced reports whether the index holds the complete list of pods, so
// that a missing pod means a pod that does not exist.
func (x *PodIndex) Synced() bool {
	if x.synced.Load() {
		return true
	}
	// Once synced, an informer stays synced: remember it, so that the
	// common case is one atomic load.
	ok := x.informer.HasSynced()
	if ok {
		x.synced.Store(true)
	}
	return ok
}

// WaitSynced waits until the index is synced or ctx ends.
func (x *PodIndex) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), x.informer.HasSynced) {
		return fmt.Errorf("nodeauth: pod index not synced: %w", context.Cause(ctx))
	}
	return nil
}

// Pod returns the pod namespace/name, if the index holds it.
func (x *PodIndex) Pod(namespace, name string) (Pod, bool) {
	obj, ok, err := x.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return Pod{}, false
	}
	r, ok := obj.(*podRecord)
	if !ok {
		return Pod{}, false
	}
	return r.pod(), true
}

// LiveUID returns the UID of the pod namespace/name, and false when the
// index holds no such pod or the pod is being deleted. A token bound to a
// pod is good only while this returns the UID the token names. It
// implements authn.ObjectIndex.
func (x *PodIndex) LiveUID(namespace, name string) (string, bool) {
	p, ok := x.Pod(namespace, name)
	if !ok || p.Deleting {
		return "", false
	}
	return p.UID, true
}

// ActiveOnNode reports whether an active pod (see Pod.Active) of service
// account namespace/sa is on node.
func (x *PodIndex) ActiveOnNode(node string, sa ServiceAccount) bool {
	keys, err := x.informer.GetIndexer().IndexKeys(indexNodeServiceAccount, nodeServiceAccountKey(node, sa.Namespace, sa.Name))
	return err == nil && len(keys) > 0
}

// Len returns the number of pods in the index.
func (x *PodIndex) Len() int { return len(x.informer.GetStore().ListKeys()) }

func nodeServiceAccountKey(node, ns, sa string) string {
	// "/" cannot occur in a node, namespace or service account name.
	return node + "/" + ns + "/" + sa
}

// nodeServiceAccountIndex indexes an active pod under its node and service
// account; other pods are not indexed, so a hit is an answer.
func nodeServiceAccountIndex(obj any) ([]string, error) {
	r, ok := obj.(*podRecord)
	if !ok {
		return nil, nil
	}
	p := r.pod()
	if !p.Active() {
		return nil, nil
	}
	return []string{nodeServiceAccountKey(p.NodeName, p.Namespace, p.ServiceAccount)}, nil
}

// podRecord is the stored form of a pod: its object metadata holds only
// the name, namespace, UID, resource version and deletion timestamp, and
// three handles stand for the whole PodSpec and PodStatus (a record is
// 256 bytes before its strings; a corev1.Pod is 1,192).
type podRecord struct {
	metav1.ObjectMeta
	// Node names, service accounts and phases repeat across many pods:
	// each is kept once, and a record holds a pointer-sized handle.
	nodeName, serviceAccount, phase unique.Handle[string]
}

func (r *podRecord) pod() Pod {
	return Pod{
		Namespace: r.Namespace, Name: r.Name, UID: string(r.UID),
		NodeName: r.nodeName.Value(), ServiceAccount: r.serviceAccount.Value(), Phase: corev1.PodPhase(r.phase.Value()),
		Deleting: r.DeletionTimestamp != nil,
	}
}

// GetObjectKind implements runtime.Object.
func (r *podRecord) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (r *podRecord) DeepCopyObject() runtime.Object {
	c := *r
	c.ObjectMeta = *r.ObjectMeta.DeepCopy()
	return &c
}

// stripPod is the informer's transform: it replaces each pod with a
// podRecord before it is stored. Objects of other kinds (such as the
// tombstone of a deleted pod) pass through.
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &podRecord{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: unique.Make(p.Namespace).Value(), UID: p.UID, ResourceVersion: p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		nodeName:       unique.Make(p.Spec.NodeName),
		serviceAccount: unique.Make(p.Spec.ServiceAccountName),
		phase:          unique.Make(string(p.Status.Phase)),
	}, nil
}
