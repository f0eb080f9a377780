// Package saindex keeps a local, watch-fed copy of the cluster's service
// accounts, reduced to their names and UIDs, so that the CA can tell
// without an API call whether the service account a token names still
// exists.
package saindex

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Index is an informer-fed map of service accounts. It is safe for
// concurrent use; Run feeds it.
type Index struct {
	informer cache.SharedIndexInformer
	running  atomic.Bool
}

// Config configures an Index.
type Config struct {
	// Client lists and watches service accounts in every namespace.
	// Required. The CA's identity needs list and watch on
	// serviceaccounts cluster-wide.
	Client kubernetes.Interface
	// Registerer receives castellan_ca_serviceaccount_index_size. Nil
	// means it is not exported.
	Registerer prometheus.Registerer
}

// New returns an empty Index; Run fills it.
func New(cfg Config) (*Index, error) {
	if cfg.Client == nil {
		return nil, errors.New("saindex: needs a Kubernetes client")
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTransform(strip))
	inf := factory.Core().V1().ServiceAccounts().Informer()
	f := promreg.With(cfg.Registerer)
	f.GaugeFunc("castellan_ca_serviceaccount_index_size",
		"Service accounts in the CA's local index (used to accept tokens without a TokenReview and to revoke cached ones).",
		func() float64 { return float64(len(inf.GetStore().ListKeys())) })
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("saindex: registering metrics: %w", err)
	}
	return &Index{informer: inf}, nil
}

// strip keeps only what LiveUID needs: about 200 bytes a service account.
func strip(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID,
		ResourceVersion: sa.ResourceVersion, DeletionTimestamp: sa.DeletionTimestamp,
	}}, nil
}

// Run lists and watches service accounts until ctx ends. An Index runs
// once.
func (x *Index) Run(ctx context.Context) error {
	if !x.running.CompareAndSwap(false, true) {
		return errors.New("saindex: Run called twice")
	}
	x.informer.RunWithContext(ctx)
	return nil
}

// Synced reports whether the index holds the complete list.
func (x *Index) Synced() bool { return x.informer.HasSynced() }

// LiveUID returns the UID of the service account namespace/name, and false
// when the index holds none or it is being deleted.
func (x *Index) LiveUID(namespace, name string) (string, bool) {
	obj, ok, err := x.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return "", false
	}
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok || sa.DeletionTimestamp != nil {
		return "", false
	}
	return string(sa.UID), true
}
