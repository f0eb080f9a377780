package kubestore

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/internal/testrun"
)

// These tests use client-go's fake clientset to check the Store's own
// logic. The behaviour against a real API server (several replicas, leader
// loss, load) is tested in integration/deploy.

const testNS = "castellan-system"

func fastConfig(client kubernetes.Interface, id string) Config {
	return Config{
		Client:          client,
		Namespace:       testNS,
		Identity:        id,
		TrustDomain:     testTD,
		LeaseDuration:   time.Second,
		RenewDeadline:   500 * time.Millisecond,
		RetryPeriod:     100 * time.Millisecond,
		RecheckInterval: 200 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// start runs a Store until the test ends.
func start(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testrun.Background(t, "kubestore Store", s.Run)
	return s
}

func TestNewChecksConfig(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{name: "no client", mutate: func(c *Config) { c.Client = nil }, wantErr: "no Kubernetes client"},
		{name: "no namespace", mutate: func(c *Config) { c.Namespace = "" }, wantErr: "no namespace"},
		{name: "no trust domain", mutate: func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, wantErr: "no trust domain"},
		{name: "renew deadline past lease", mutate: func(c *Config) { c.RenewDeadline = 2 * c.LeaseDuration }, wantErr: "lease duration"},
		{name: "valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig(fake.NewClientset(), "a")
			if tt.mutate != nil {
				tt.mutate(&cfg)
			}
			_, err := New(cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFirstReplicaCreatesOthersLoad(t *testing.T) {
	client := fake.NewClientset()
	cfg := fastConfig(client, "a")
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	a := start(t, cfg)
	<-a.Loaded()
	changed := a.Changed()
	b := start(t, fastConfig(client, "b"))
	<-b.Loaded()

	if !a.Authority().Root().Equal(b.Authority().Root()) {
		t.Fatal("replicas loaded different roots")
	}
	for _, s := range []*Store{a, b} {
		if ok, msg := s.Ready(); !ok {
			t.Fatalf("%s not ready: %s", s.cfg.Identity, msg)
		}
	}
	sec, err := client.CoreV1().Secrets(testNS).Get(context.Background(), DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Labels[ManagedByLabel] != ManagedByValue || sec.Annotations[CreatedByAnnotation] != "a" {
		t.Fatalf("Secret metadata = %v %v", sec.Labels, sec.Annotations)
	}
	// The leader counts its root once written; its own watch may have
	// loaded it before.
	testpoll.Until(t, "the leader to count the root it created", func() bool { return testutil.ToFloat64(a.metrics.created) != 0 })
	if got := testutil.ToFloat64(a.metrics.created); got != 1 {
		t.Fatalf("roots created by the leader = %v, want 1", got)
	}
	if got := testutil.ToFloat64(b.metrics.created); got != 0 {
		t.Fatalf("roots created by the follower = %v, want 0", got)
	}
	// The other replica's load of the same content is no change here.
	select {
	case <-changed:
		t.Error("Changed signalled with the Secret unchanged")
	default:
	}
	if n, err := testutil.GatherAndCount(reg, "castellan_kubestore_leader", "castellan_kubestore_ready"); err != nil || n != 2 {
		t.Errorf("metrics: %d series, %v", n, err)
	}
}

func TestLostSecretIsNotReadyAndNotRecreated(t *testing.T) {
	client := fake.NewClientset()
	s := start(t, fastConfig(client, "a"))
	<-s.Loaded()
	root := s.Authority().Root()

	if err := client.CoreV1().Secrets(testNS).Delete(context.Background(), DefaultSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "not ready", func() bool { ok, _ := s.Ready(); return !ok })
	_, msg := s.Ready()
	if !strings.Contains(msg, "deleted") {
		t.Errorf("Ready message = %q", msg)
	}
	// The replica keeps the material it had and creates nothing.
	time.Sleep(500 * time.Millisecond)
	if _, err := client.CoreV1().Secrets(testNS).Get(context.Background(), DefaultSecretName, metav1.GetOptions{}); err == nil {
		t.Fatal("the Secret was created again after it was deleted")
	}
	if !s.Authority().Root().Equal(root) {
		t.Fatal("the Authority changed after the Secret was deleted")
	}
}

func TestInvalidUpdateKeepsMaterial(t *testing.T) {
	client := fake.NewClientset()
	s := start(t, fastConfig(client, "a"))
	<-s.Loaded()
	before := s.Authority()

	sec, err := client.CoreV1().Secrets(testNS).Get(context.Background(), DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data[CAKeyKey] = []byte("garbage")
	if _, err := client.CoreV1().Secrets(testNS).Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the invalid content to be seen", func() bool {
		return testutil.ToFloat64(s.metrics.loads.WithLabelValues("invalid")) > 0
	})
	if s.Authority() != before {
		t.Fatal("invalid content replaced the Authority")
	}
	if ok, msg := s.Ready(); !ok {
		t.Fatalf("not ready after an invalid edit: %s", msg)
	}
}

func TestPluggedInSecretIsUsed(t *testing.T) {
	client := fake.NewClientset()
	root, rootKey := newRoot(t)
	inter, interKey := newIntermediate(t, root, rootKey)
	_, err := client.CoreV1().Secrets(testNS).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: testNS},
		Data: map[string][]byte{
			CACertKey: pemOf(inter), CAKeyKey: keyPEM(t, interKey),
			CertChainKey: pemOf(inter), RootCertKey: pemOf(root),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig(client, "a")
	cfg.SecretName = "cacerts"
	s := start(t, cfg)
	<-s.Loaded()
	if !s.Authority().Cert.Equal(inter) || !s.Authority().Root().Equal(root) {
		t.Fatal("the Store did not sign with the plugged-in intermediate")
	}
}

func TestLeaderJobsRunOnLeaderOnly(t *testing.T) {
	client := fake.NewClientset()
	var (
		mu      sync.Mutex
		running = map[string]bool{}
	)
	job := func(id string) func(context.Context) error {
		return func(ctx context.Context) error {
			mu.Lock()
			running[id] = true
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			running[id] = false
			mu.Unlock()
			return nil
		}
	}
	cfgA := fastConfig(client, "a")
	cfgA.LeaderJobs = []func(context.Context) error{job("a")}
	a := start(t, cfgA)
	<-a.Loaded()
	testpoll.Until(t, "a to lead", a.IsLeader)
	cb := fastConfig(client, "b")
	cb.LeaderJobs = []func(context.Context) error{job("b")}
	b := start(t, cb)
	<-b.Loaded()
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	if !running["a"] || running["b"] {
		t.Fatalf("jobs running = %v, want only a's", running)
	}
	mu.Unlock()
	if b.IsLeader() {
		t.Fatal("two leaders")
	}
}
