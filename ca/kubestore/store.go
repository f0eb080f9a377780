// Package kubestore keeps the CA's signing material in a Kubernetes Secret
// that every replica of the CA shares.
//
// The first replica to hold the Lease creates a self-signed root and writes
// it, key included, to the Secret. Every replica, the leader included, loads
// the material from the Secret and signs with it; signing needs no leader.
// Only the leader runs the periodic jobs it is given (trust distribution)
// and takes the automatic rotation steps of a root it created (see
// Store.Rotation).
// A replica never makes a root of its own: once it has loaded
// one, it refuses to create another, and if the Secret is deleted or cannot
// be read it reports itself not ready and goes on with what it has. The
// Secret is watched, so a change (an operator plugging in Istio's cacerts
// material, say) reaches every replica.
//
// The Secret uses the keys of Istio's cacerts Secret (ca-cert.pem,
// ca-key.pem, cert-chain.pem, root-cert.pem), so a Secret prepared for
// Istio's plugged-in CA can be used as it is.
package kubestore

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Defaults of Config.
const (
	DefaultSecretName      = "castellan-ca"
	DefaultLeaseName       = "castellan-ca"
	DefaultLeaseDuration   = 15 * time.Second
	DefaultRenewDeadline   = 10 * time.Second
	DefaultRetryPeriod     = 2 * time.Second
	DefaultRecheckInterval = 30 * time.Second
)

// Labels and annotations set on a Secret the Store creates.
const (
	ManagedByLabel      = "app.kubernetes.io/managed-by"
	ManagedByValue      = "castellan"
	CreatedByAnnotation = "castellan.io/created-by"
)

// Config configures a Store. Zero values select the noted defaults.
type Config struct {
	// Client talks to the cluster. Required.
	Client kubernetes.Interface
	// Namespace holds the Secret and the Lease. Required.
	Namespace string
	// SecretName names the Secret with the CA material.
	// Default: DefaultSecretName.
	SecretName string
	// LeaseName names the Lease the replicas elect a leader with.
	// Default: DefaultLeaseName.
	LeaseName string
	// Identity names this replica in the Lease; use the pod name.
	// Default: the host name.
	Identity string
	// TrustDomain is named in a root the Store creates. Required.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a root the Store creates. Default: 10 years.
	RootTTL time.Duration
	// Signer, if set, is the root key, kept outside Kubernetes (an HSM, a
	// KMS). The Secret then holds no key, and the certificate in it must
	// match Signer.
	Signer crypto.Signer
	// Keys, if set, is the key store of Signer (kms.Ring): the Secret then
	// names the active root's key in its rotation state, and a rotation
	// creates the next root's key in the same store, never in software.
	Keys rotation.KeyStore
	// LeaderJobs run on the leader only, from when it holds the Lease and
	// the Secret exists until it loses the Lease. A job that returns an
	// error is logged and started again after a pause.
	LeaderJobs []func(context.Context) error
	// LeaseDuration, RenewDeadline and RetryPeriod time the leader
	// election (see client-go's leaderelection). Defaults:
	// DefaultLeaseDuration, DefaultRenewDeadline, DefaultRetryPeriod.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// RecheckInterval is how often the Secret is read directly, besides
	// the watch, to notice that it cannot be read. Default:
	// DefaultRecheckInterval.
	RecheckInterval time.Duration
	// Logger receives the Store's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the Store's metrics. Default: none.
	Registerer prometheus.Registerer
}

// Store is signing material kept in a Kubernetes Secret. It implements
// ca.Notifier, and has a Ready method that the CA's /readyz consults.
type Store struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time

	cur      atomic.Pointer[ca.Authority]
	changed  broadcast.Signal
	loaded   chan struct{} // closed at the first load
	leading  atomic.Bool
	running  atomic.Bool
	leadMu   sync.Mutex // one leader term at a time
	termsMu  sync.Mutex
	termsCnd *sync.Cond
	terms    int // leader terms in progress
	closing  bool

	mu         sync.Mutex
	data       map[string][]byte // the Secret's data last loaded
	last       *corev1.Secret    // the Secret last seen, by the watch or a read; nil once deleted
	lost       bool              // the Secret was deleted after it was loaded
	readErr    error             // the latest direct read failed
	invalidErr error             // the latest content did not load
}

// New checks cfg and returns a Store. Nothing is loaded until Run.
func New(cfg Config) (*Store, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kubestore: no Kubernetes client")
	case cfg.Namespace == "":
		return nil, errors.New("kubestore: no namespace")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("kubestore: no trust domain")
	case cfg.Keys != nil && cfg.Signer == nil:
		return nil, errors.New("kubestore: a key store without its configured key (Signer)")
	}
	cfg.SecretName = cmp.Or(cfg.SecretName, DefaultSecretName)
	cfg.LeaseName = cmp.Or(cfg.LeaseName, DefaultLeaseName)
	if cfg.Identity == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return nil, fmt.Errorf("kubestore: no identity given and no host name: %v", err)
		}
		cfg.Identity = h
	}
	cfg.LeaseDuration = cmp.Or(cfg.LeaseDuration, DefaultLeaseDuration)
	cfg.RenewDeadline = cmp.Or(cfg.RenewDeadline, DefaultRenewDeadline)
	cfg.RetryPeriod = cmp.Or(cfg.RetryPeriod, DefaultRetryPeriod)
	cfg.RecheckInterval = cmp.Or(cfg.RecheckInterval, DefaultRecheckInterval)
	if cfg.LeaseDuration <= cfg.RenewDeadline || cfg.RenewDeadline <= cfg.RetryPeriod {
		return nil, fmt.Errorf("kubestore: need lease duration (%v) > renew deadline (%v) > retry period (%v)",
			cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod)
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	s := &Store{
		cfg:    cfg,
		log:    cfg.Logger.With("secret", cfg.Namespace+"/"+cfg.SecretName),
		loaded: make(chan struct{}),
		now:    time.Now,
	}
	s.termsCnd = sync.NewCond(&s.termsMu)
	m, err := newMetrics(cfg.Registerer, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

// Authority returns the Authority to sign with now, or nil before the
// Secret has been loaded.
func (s *Store) Authority() *ca.Authority { return s.cur.Load() }

// Changed returns a channel closed when an Authority is loaded from the
// Secret, the first included.
func (s *Store) Changed() <-chan struct{} { return s.changed.C() }

// Loaded is closed once the Secret has been loaded for the first time.
func (s *Store) Loaded() <-chan struct{} { return s.loaded }

// IsLeader reports whether this replica holds the Lease now.
func (s *Store) IsLeader() bool { return s.leading.Load() }

// Ready reports whether this replica should receive requests, and why not.
// It is not ready before the Secret is loaded, when the Secret was deleted,
// and when the latest read of it failed.
func (s *Store) Ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := s.cfg.Namespace + "/" + s.cfg.SecretName
	switch {
	case s.lost:
		return false, fmt.Sprintf("CA Secret %s was deleted; this replica will not create a new root (restore the Secret)", name)
	case s.readErr != nil:
		return false, fmt.Sprintf("cannot read CA Secret %s: %v", name, s.readErr)
	case s.cur.Load() == nil && s.invalidErr != nil:
		return false, fmt.Sprintf("CA Secret %s does not hold usable material: %v", name, s.invalidErr)
	case s.cur.Load() == nil:
		return false, fmt.Sprintf("waiting for CA Secret %s", name)
	}
	return true, "ok"
}

// Run watches the Secret, takes part in the leader election and, while
// leading, creates the Secret if it does not exist and runs the leader
// jobs. It returns when ctx ends, after every job has stopped. A Store
// runs once.
func (s *Store) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kubestore: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0,
		informers.WithNamespace(s.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.cfg.SecretName).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.observeObject(obj) },
		UpdateFunc: func(_, obj any) { s.observeObject(obj) },
		DeleteFunc: func(obj any) {
			if sec, ok := secretOf(obj); ok && sec.Name == s.cfg.SecretName {
				s.markLost()
			}
		},
	}); err != nil {
		return fmt.Errorf("kubestore: watch Secret: %w", err)
	}

	var wg sync.WaitGroup
	wg.Go(func() { inf.RunWithContext(ctx) })
	wg.Go(func() { s.recheck(ctx) })
	wg.Go(func() { s.elect(ctx) })
	<-ctx.Done()
	wg.Wait()

	// Wait for a leader term whose jobs are still stopping.
	s.termsMu.Lock()
	s.closing = true
	for s.terms > 0 {
		s.termsCnd.Wait()
	}
	s.termsMu.Unlock()
	return nil
}

func secretOf(obj any) (*corev1.Secret, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	sec, ok := obj.(*corev1.Secret)
	return sec, ok
}

func (s *Store) observeObject(obj any) {
	if sec, ok := secretOf(obj); ok && sec.Name == s.cfg.SecretName {
		s.observe(sec)
	}
}

// observe loads sec if its content changed. Content that does not load is
// logged and counted; the current Authority stays.
func (s *Store) observe(sec *corev1.Secret) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lost, s.readErr, s.last = false, nil, sec
	if s.cur.Load() != nil && maps.EqualFunc(sec.Data, s.data, bytes.Equal) {
		return
	}
	a, err := s.decode(sec)
	if err != nil {
		if s.invalidErr == nil || s.invalidErr.Error() != err.Error() {
			s.log.Error("CA Secret does not hold usable material; keeping the current material", "error", err, "resource_version", sec.ResourceVersion)
		}
		s.invalidErr = err
		s.metrics.loads.WithLabelValues("invalid").Inc()
		return
	}
	old := s.cur.Load()
	s.data, s.invalidErr = sec.Data, nil
	s.cur.Store(a)
	// Signalled before Loaded closes: who waits for Loaded, then takes
	// Changed, gets the channel of the next change.
	s.changed.Notify()
	s.metrics.loads.WithLabelValues("loaded").Inc()
	switch {
	case old == nil:
		close(s.loaded)
		s.log.Info("loaded CA material from Secret", "subject", a.Cert.Subject.String(), "root", a.Root().Subject.String(), "not_after", a.NotAfter())
	case !old.Root().Equal(a.Root()):
		s.log.Warn("the root in the CA Secret changed", "old_root_serial", old.Root().SerialNumber.String(), "new_root_serial", a.Root().SerialNumber.String())
	default:
		s.log.Info("reloaded CA material from Secret", "subject", a.Cert.Subject.String(), "not_after", a.NotAfter())
	}
}

// decode builds the Authority of the CA Secret sec, with the key its
// rotation state names when the root keys are in a key store.
func (s *Store) decode(sec *corev1.Secret) (*ca.Authority, error) {
	if s.cfg.Keys == nil {
		return decodeAuthority(sec.Data, s.cfg.Signer)
	}
	st, err := secretState(sec)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), rotation.KeyOpTimeout)
	defer cancel()
	key, err := s.cfg.Keys.Open(ctx, st.Key)
	if err != nil {
		return nil, fmt.Errorf("the active root's key %q in the key store: %w", st.Key, err)
	}
	return decodeAuthority(sec.Data, key)
}

// lastSecret returns the Secret last seen by the watch or a direct read,
// or nil when none was seen or it was deleted since. The informer's copy
// is shared: callers must not modify it.
func (s *Store) lastSecret() *corev1.Secret {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// markLost records that the Secret is gone. A replica that never loaded it
// is simply still waiting.
func (s *Store) markLost() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = nil
	if s.cur.Load() == nil || s.lost {
		return
	}
	s.lost = true
	s.log.Error("the CA Secret was deleted; reporting not ready and signing on with the material already loaded")
}

// recheck reads the Secret directly every RecheckInterval (every
// RetryPeriod while reads fail), so that a replica that cannot read it
// notices even when the watch is quiet.
func (s *Store) recheck(ctx context.Context) {
	for {
		wait := s.cfg.RecheckInterval
		if err := s.readOnce(ctx); err != nil && ctx.Err() == nil {
			wait = s.cfg.RetryPeriod
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (s *Store) readOnce(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RenewDeadline)
	defer cancel()
	sec, err := s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace).Get(rctx, s.cfg.SecretName, metav1.GetOptions{})
	switch {
	case err == nil:
		s.observe(sec)
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case apierrors.IsNotFound(err):
		s.metrics.readErrors.WithLabelValues("not_found").Inc()
		s.markLost()
		return err
	}
	reason := "other"
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		reason = "forbidden"
	}
	s.metrics.readErrors.WithLabelValues(reason).Inc()
	s.mu.Lock()
	if s.readErr == nil {
		s.log.Error("cannot read the CA Secret; reporting not ready", "error", err)
	}
	s.readErr = err
	s.mu.Unlock()
	return err
}

// elect takes part in the leader election until ctx ends. A lost Lease is
// campaigned for again.
func (s *Store) elect(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: s.cfg.Namespace, Name: s.cfg.LeaseName},
		Client:     s.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			Name:            s.cfg.LeaseName,
			LeaseDuration:   s.cfg.LeaseDuration,
			RenewDeadline:   s.cfg.RenewDeadline,
			RetryPeriod:     s.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: s.lead,
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != s.cfg.Identity {
						s.log.Info("observed a new leader", "leader", id)
					}
				},
			},
		})
		if err != nil {
			// The configuration was checked in New; this is a bug.
			s.log.Error("cannot start the leader election", "error", err)
			return
		}
		le.Run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.RetryPeriod):
		}
	}
}

// lead is one leader term: make sure the Secret exists, then run the
// leader jobs until ctx ends.
func (s *Store) lead(ctx context.Context) {
	s.termsMu.Lock()
	if s.closing {
		s.termsMu.Unlock()
		return
	}
	s.terms++
	s.termsMu.Unlock()
	defer func() {
		s.termsMu.Lock()
		s.terms--
		s.termsCnd.Broadcast()
		s.termsMu.Unlock()
	}()
	// A term starts only after the previous one has stopped.
	s.leadMu.Lock()
	defer s.leadMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	s.leading.Store(true)
	s.metrics.leader.Set(1)
	defer func() {
		s.leading.Store(false)
		s.metrics.leader.Set(0)
		s.log.Info("stopped leading")
	}()
	s.log.Info("became leader", "identity", s.cfg.Identity)

	for backoff := s.cfg.RetryPeriod; ; backoff = min(2*backoff, s.cfg.RecheckInterval) {
		err := s.ensureSecret(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Error("cannot make sure the CA Secret exists", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}

	var wg sync.WaitGroup
	for i, job := range s.cfg.LeaderJobs {
		wg.Go(func() { s.runJob(ctx, i, job) })
	}
	wg.Wait()
}

// runJob runs job until ctx ends, starting it again after an error.
func (s *Store) runJob(ctx context.Context, i int, job func(context.Context) error) {
	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := job(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		s.log.Error("leader job stopped; starting it again", "job", i, "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// ensureSecret loads the Secret, creating it with a new root if it does not
// exist and this replica has never loaded one.
func (s *Store) ensureSecret(ctx context.Context) error {
	secrets := s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace)
	sec, err := secrets.Get(ctx, s.cfg.SecretName, metav1.GetOptions{})
	switch {
	case err == nil:
		s.observe(sec)
		if s.cur.Load() == nil {
			return fmt.Errorf("kubestore: Secret %s/%s exists but does not hold usable material; fix or delete it", s.cfg.Namespace, s.cfg.SecretName)
		}
		return nil
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("kubestore: read Secret: %w", err)
	case s.cur.Load() != nil:
		s.markLost()
		return fmt.Errorf("kubestore: Secret %s/%s was deleted after its root was loaded; refusing to create a new root", s.cfg.Namespace, s.cfg.SecretName)
	}

	sec, err = s.newSecret()
	if err != nil {
		return err
	}
	created, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Another replica got there first (it held the Lease before us and
		// its write landed late). Use what it wrote.
		s.log.Warn("the CA Secret appeared while this leader was creating it; using the existing one")
		return s.ensureSecret(ctx)
	}
	if err != nil {
		return fmt.Errorf("kubestore: create Secret: %w", err)
	}
	s.metrics.created.Inc()
	s.log.Info("created a self-signed root in the CA Secret", "identity", s.cfg.Identity)
	s.observe(created)
	return nil
}

// newSecret makes a new self-signed root and the Secret that holds it.
func (s *Store) newSecret() (*corev1.Secret, error) {
	key := s.cfg.Signer
	if key == nil {
		k, err := kms.GenerateKey(kms.ECDSAP256)
		if err != nil {
			return nil, fmt.Errorf("kubestore: generate root key: %w", err)
		}
		key = k
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: s.cfg.TrustDomain, TTL: s.cfg.RootTTL})
	if err != nil {
		return nil, fmt.Errorf("kubestore: %w", err)
	}
	data, err := encodeAuthority(root, key, s.cfg.Signer != nil)
	if err != nil {
		return nil, fmt.Errorf("kubestore: %w", err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        s.cfg.SecretName,
			Namespace:   s.cfg.Namespace,
			Labels:      map[string]string{ManagedByLabel: ManagedByValue},
			Annotations: map[string]string{CreatedByAnnotation: s.cfg.Identity},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}, nil
}
