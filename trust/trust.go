// Package trust distributes the CA's trust bundle inside a Kubernetes
// cluster. Its Controller publishes the bundle to a ConfigMap in every
// namespace (by default istio-ca-root-cert, key root-cert.pem, as Istio
// does), so that workloads and agents can mount it. It creates the
// ConfigMap in new namespaces, repairs it when it is edited or deleted, and
// rewrites every copy when the bundle changes. Optionally it also publishes
// the bundle as a ClusterTrustBundle, when the API server serves them.
package trust

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Defaults of Config.
const (
	DefaultConfigMapName = "istio-ca-root-cert"
	DefaultKey           = "root-cert.pem"
	DefaultResync        = 10 * time.Minute
	DefaultWorkers       = 2
)

// Labels set on every object the Controller writes.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "castellan"
)

// clusterTrustBundleKey is the queue key of the ClusterTrustBundle. It
// cannot collide with a namespace name, which has no slash.
const clusterTrustBundleKey = "/clustertrustbundle"

// Config configures a Controller. Zero values select the noted defaults.
type Config struct {
	// Client talks to the cluster. Required.
	Client kubernetes.Interface
	// Bundle returns the PEM trust bundle to publish now. It returns nil
	// while there is none, and nothing is written then. Required.
	Bundle func() []byte
	// ConfigMapName names the ConfigMap in each namespace.
	// Default: DefaultConfigMapName.
	ConfigMapName string
	// Key is the ConfigMap key holding the bundle. Default: DefaultKey.
	Key string
	// Extra, if set, returns more keys published beside Key in every
	// ConfigMap (such as federated-bundles.json, the bundles of the
	// federated trust domains); a key equal to Key is ignored. Call
	// BundleChanged when its result changes.
	Extra func() map[string]string
	// ExcludeNamespaces are namespaces that get no ConfigMap. Default:
	// none; every namespace gets one.
	ExcludeNamespaces []string
	// ClusterTrustBundleName, if set, also publishes the bundle as a
	// cluster-scoped ClusterTrustBundle (certificates.k8s.io/v1beta1, no
	// signer) of that name. The name must not contain a colon. When the
	// API server does not serve ClusterTrustBundles (the default up to
	// Kubernetes 1.36), this is logged once and skipped.
	ClusterTrustBundleName string
	// Resync is how often every namespace is checked again even without
	// events. Default: DefaultResync.
	Resync time.Duration
	// Workers is the number of concurrent writers. Default: DefaultWorkers.
	Workers int
	// Logger receives the Controller's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the Controller's metrics. Default: none.
	Registerer prometheus.Registerer
}

// Controller keeps the trust bundle published. Create it with New and
// start it with Run.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	exclude map[string]bool
	queue   workqueue.TypedRateLimitingInterface[string]

	mu         sync.Mutex
	namespaces corelisters.NamespaceLister // set once the caches have synced
	configMaps corelisters.ConfigMapLister
	ctbServed  bool
}

// New checks cfg and returns a Controller.
func New(cfg Config) (*Controller, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("trust: no Kubernetes client")
	case cfg.Bundle == nil:
		return nil, errors.New("trust: no bundle source")
	case bytes.ContainsRune([]byte(cfg.ClusterTrustBundleName), ':'):
		return nil, fmt.Errorf("trust: ClusterTrustBundle name %q has a colon, which is reserved for bundles linked to a signer", cfg.ClusterTrustBundleName)
	}
	if cfg.ConfigMapName == "" {
		cfg.ConfigMapName = DefaultConfigMapName
	}
	if cfg.Key == "" {
		cfg.Key = DefaultKey
	}
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Controller{
		cfg:     cfg,
		log:     cfg.Logger.With("configmap", cfg.ConfigMapName),
		metrics: m,
		exclude: map[string]bool{},
	}
	for _, ns := range cfg.ExcludeNamespaces {
		c.exclude[ns] = true
	}
	return c, nil
}

// BundleChanged makes the Controller publish the current bundle to every
// namespace. It does not block, and does nothing while Run is not running.
func (c *Controller) BundleChanged() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.namespaces == nil {
		return // the first sync publishes everywhere anyway
	}
	nss, err := c.namespaces.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ns := range nss {
		c.queue.Add(ns.Name)
	}
	if c.ctbServed {
		c.queue.Add(clusterTrustBundleKey)
	}
}

// Run publishes the bundle until ctx ends. It may be run again after it
// returns (a replica that regains leadership).
func (c *Controller) Run(ctx context.Context) error {
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "castellan_trust"})
	defer queue.ShutDown()

	nsFactory := informers.NewSharedInformerFactory(c.cfg.Client, c.cfg.Resync)
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, c.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.cfg.ConfigMapName).String()
		}))
	nsInf := nsFactory.Core().V1().Namespaces()
	cmInf := cmFactory.Core().V1().ConfigMaps()

	enqueueNS := func(obj any) {
		if ns, ok := objectOf[*corev1.Namespace](obj); ok {
			queue.Add(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if cm, ok := objectOf[*corev1.ConfigMap](obj); ok && cm.Name == c.cfg.ConfigMapName {
			queue.Add(cm.Namespace)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueNS,
		UpdateFunc: func(_, obj any) { enqueueNS(obj) },
	}); err != nil {
		return fmt.Errorf("trust: watch namespaces: %w", err)
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueCM,
		UpdateFunc: func(_, obj any) { enqueueCM(obj) },
		DeleteFunc: enqueueCM,
	}); err != nil {
		return fmt.Errorf("trust: watch ConfigMaps: %w", err)
	}

	var ctb *ctbWatch
	if c.cfg.ClusterTrustBundleName != "" {
		served, err := c.clusterTrustBundlesServed()
		switch {
		case err != nil:
			c.log.Warn("cannot tell whether ClusterTrustBundles are served; not publishing one", "error", err)
		case !served:
			c.log.Info("the API server does not serve certificates.k8s.io/v1beta1 ClusterTrustBundles; not publishing one (enable the ClusterTrustBundle feature gate and that API version to have one)")
		default:
			ctb = c.watchClusterTrustBundle(queue)
		}
	}

	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	if ctb != nil {
		ctb.factory.Start(ctx.Done())
	}
	defer func() {
		queue.ShutDown()
		nsFactory.Shutdown()
		cmFactory.Shutdown()
		if ctb != nil {
			ctb.factory.Shutdown()
		}
	}()
	synced := []cache.InformerSynced{nsInf.Informer().HasSynced, cmInf.Informer().HasSynced}
	if ctb != nil {
		synced = append(synced, ctb.synced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended
	}

	c.mu.Lock()
	c.queue = queue
	c.namespaces, c.configMaps = nsInf.Lister(), cmInf.Lister()
	c.ctbServed = ctb != nil
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.namespaces, c.configMaps, c.ctbServed = nil, nil, false
		c.mu.Unlock()
	}()
	if ctb != nil {
		queue.Add(clusterTrustBundleKey)
	}
	c.log.Info("trust distribution started")

	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.processNext(ctx, queue, ctb) {
			}
		})
	}
	<-ctx.Done()
	queue.ShutDown()
	wg.Wait()
	return nil
}

func objectOf[T metav1.Object](obj any) (T, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	o, ok := obj.(T)
	return o, ok
}

func (c *Controller) processNext(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], ctb *ctbWatch) bool {
	key, shutdown := queue.Get()
	if shutdown {
		return false
	}
	defer queue.Done(key)
	var err error
	if key == clusterTrustBundleKey {
		err = c.syncClusterTrustBundle(ctx, ctb)
	} else {
		err = c.syncNamespace(ctx, key)
	}
	switch {
	case err == nil:
		queue.Forget(key)
	case ctx.Err() != nil:
	default:
		c.metrics.errors.Inc()
		c.log.Warn("cannot publish the trust bundle; will retry", "key", key, "error", err, "retries", queue.NumRequeues(key))
		queue.AddRateLimited(key)
	}
	return true
}

// syncNamespace makes the ConfigMap in ns hold exactly the bundle.
func (c *Controller) syncNamespace(ctx context.Context, name string) error {
	if c.exclude[name] {
		return nil
	}
	bundle := c.cfg.Bundle()
	if len(bundle) == 0 {
		return nil
	}
	c.mu.Lock()
	nsLister, cmLister := c.namespaces, c.configMaps
	c.mu.Unlock()
	if nsLister == nil {
		return nil
	}
	ns, err := nsLister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.Status.Phase == corev1.NamespaceTerminating || ns.DeletionTimestamp != nil {
		return nil
	}
	want := c.data(bundle)
	cms := c.cfg.Client.CoreV1().ConfigMaps(name)
	cur, err := cmLister.ConfigMaps(name).Get(c.cfg.ConfigMapName)
	switch {
	case apierrors.IsNotFound(err):
		_, err := cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{
				Name:      c.cfg.ConfigMapName,
				Namespace: name,
				Labels:    map[string]string{ManagedByLabel: ManagedByValue},
			},
			Data: want,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("trust: ConfigMap %s/%s appeared meanwhile", name, c.cfg.ConfigMapName)
		}
		if apierrors.IsNotFound(err) || isNamespaceTerminating(err) {
			return nil // the namespace went away
		}
		if err != nil {
			return fmt.Errorf("trust: create ConfigMap %s/%s: %w", name, c.cfg.ConfigMapName, err)
		}
		c.metrics.writes.WithLabelValues("create").Inc()
		c.log.Debug("published the trust bundle", "namespace", name)
		return nil
	case err != nil:
		return err
	}
	if c.upToDate(cur, want) {
		return nil
	}
	upd := cur.DeepCopy()
	upd.Data = want
	upd.BinaryData = nil
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[ManagedByLabel] = ManagedByValue
	if _, err := cms.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("trust: ConfigMap %s/%s was deleted meanwhile", name, c.cfg.ConfigMapName)
		}
		return fmt.Errorf("trust: update ConfigMap %s/%s: %w", name, c.cfg.ConfigMapName, err)
	}
	c.metrics.writes.WithLabelValues("update").Inc()
	c.log.Info("repaired the trust bundle ConfigMap", "namespace", name)
	return nil
}

// data returns the content of every ConfigMap: the bundle under Key, and
// the Extra keys.
func (c *Controller) data(bundle []byte) map[string]string {
	want := map[string]string{c.cfg.Key: string(bundle)}
	if c.cfg.Extra != nil {
		for k, v := range c.cfg.Extra() {
			if k != c.cfg.Key {
				want[k] = v
			}
		}
	}
	return want
}

// upToDate reports whether cm holds exactly the data and our label.
func (c *Controller) upToDate(cm *corev1.ConfigMap, want map[string]string) bool {
	return maps.Equal(cm.Data, want) && len(cm.BinaryData) == 0 &&
		cm.Labels[ManagedByLabel] == ManagedByValue
}

func isNamespaceTerminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

// ctbWatch watches the one ClusterTrustBundle the Controller writes.
type ctbWatch struct {
	factory informers.SharedInformerFactory
	synced  cache.InformerSynced
	get     func() (*certificatesv1beta1.ClusterTrustBundle, error)
}

// clusterTrustBundlesServed asks discovery whether the API server serves
// certificates.k8s.io/v1beta1 clustertrustbundles.
func (c *Controller) clusterTrustBundlesServed() (bool, error) {
	list, err := c.cfg.Client.Discovery().ServerResourcesForGroupVersion(certificatesv1beta1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "clustertrustbundles" }), nil
}

func (c *Controller) watchClusterTrustBundle(queue workqueue.TypedRateLimitingInterface[string]) *ctbWatch {
	f := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, c.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.cfg.ClusterTrustBundleName).String()
		}))
	inf := f.Certificates().V1beta1().ClusterTrustBundles()
	enqueue := func(any) { queue.Add(clusterTrustBundleKey) }
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	lister := inf.Lister()
	return &ctbWatch{
		factory: f,
		synced:  inf.Informer().HasSynced,
		get: func() (*certificatesv1beta1.ClusterTrustBundle, error) {
			return lister.Get(c.cfg.ClusterTrustBundleName)
		},
	}
}

// syncClusterTrustBundle makes the ClusterTrustBundle hold the bundle.
func (c *Controller) syncClusterTrustBundle(ctx context.Context, w *ctbWatch) error {
	bundle := c.cfg.Bundle()
	if w == nil || len(bundle) == 0 {
		return nil
	}
	client := c.cfg.Client.CertificatesV1beta1().ClusterTrustBundles()
	name := c.cfg.ClusterTrustBundleName
	cur, err := w.get()
	switch {
	case apierrors.IsNotFound(err):
		_, err := client.Create(ctx, &certificatesv1beta1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{ManagedByLabel: ManagedByValue}},
			Spec:       certificatesv1beta1.ClusterTrustBundleSpec{TrustBundle: string(bundle)},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("trust: create ClusterTrustBundle %s: %w", name, err)
		}
		c.metrics.writes.WithLabelValues("create").Inc()
		c.log.Info("published the trust bundle as a ClusterTrustBundle", "name", name)
		return nil
	case err != nil:
		return err
	}
	if cur.Spec.TrustBundle == string(bundle) && cur.Spec.SignerName == "" && cur.Labels[ManagedByLabel] == ManagedByValue {
		return nil
	}
	if cur.Spec.SignerName != "" {
		return fmt.Errorf("trust: ClusterTrustBundle %s is linked to signer %q; not overwriting it", name, cur.Spec.SignerName)
	}
	upd := cur.DeepCopy()
	upd.Spec.TrustBundle = string(bundle)
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[ManagedByLabel] = ManagedByValue
	if _, err := client.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("trust: update ClusterTrustBundle %s: %w", name, err)
	}
	c.metrics.writes.WithLabelValues("update").Inc()
	c.log.Info("repaired the ClusterTrustBundle", "name", name)
	return nil
}
