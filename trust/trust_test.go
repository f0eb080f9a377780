package trust

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/internal/testrun"
)

// These tests check the Controller's logic with client-go's fake
// clientset. The same behaviour against a real API server is tested in
// integration/deploy.

type bundle struct {
	mu  sync.Mutex
	pem []byte
}

func (b *bundle) get() []byte  { b.mu.Lock(); defer b.mu.Unlock(); return b.pem }
func (b *bundle) set(p string) { b.mu.Lock(); b.pem = []byte(p); b.mu.Unlock() }

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func startController(t *testing.T, cfg Config) *Controller {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testrun.Background(t, "trust controller", c.Run)
	return c
}

// waitConfigMap waits until ns holds the ConfigMap with the bundle want
// and nothing else.
func waitConfigMap(t *testing.T, client *fake.Clientset, ns, want string) {
	t.Helper()
	waitConfigMapData(t, client, ns, map[string]string{DefaultKey: want})
}

// waitConfigMapData waits until ns holds the ConfigMap with exactly data.
func waitConfigMapData(t *testing.T, client *fake.Clientset, ns string, data map[string]string) {
	t.Helper()
	testpoll.UntilNil(t, func() error {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(context.Background(), DefaultConfigMapName, metav1.GetOptions{})
		if err != nil || !maps.Equal(cm.Data, data) {
			return fmt.Errorf("ConfigMap in %s: got %v (err %v), want data %q", ns, cm, err, data)
		}
		return nil
	})
}

func TestNewChecksConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no client", cfg: Config{Bundle: func() []byte { return nil }}, wantErr: "no Kubernetes client"},
		{name: "no bundle", cfg: Config{Client: fake.NewClientset()}, wantErr: "no bundle source"},
		{name: "colon in bundle name", cfg: Config{Client: fake.NewClientset(), Bundle: func() []byte { return nil }, ClusterTrustBundleName: "a:b"}, wantErr: "colon"},
		{name: "valid", cfg: Config{Client: fake.NewClientset(), Bundle: func() []byte { return nil }}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
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

func TestPublishRepairAndFollow(t *testing.T) {
	client := fake.NewClientset(namespace("default"), namespace("kube-system"), namespace("skip"))
	b := &bundle{}
	b.set("ROOT-1")
	c := startController(t, Config{Client: client, Bundle: b.get, ExcludeNamespaces: []string{"skip"}})
	ctx := context.Background()

	waitConfigMap(t, client, "default", "ROOT-1")
	waitConfigMap(t, client, "kube-system", "ROOT-1")

	// A new namespace gets the ConfigMap.
	if _, err := client.CoreV1().Namespaces().Create(ctx, namespace("team-a"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitConfigMap(t, client, "team-a", "ROOT-1")

	// An edit is repaired, extra keys included.
	cm, err := client.CoreV1().ConfigMaps("team-a").Get(ctx, DefaultConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data = map[string]string{DefaultKey: "EVIL", "extra": "x"}
	if _, err := client.CoreV1().ConfigMaps("team-a").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitConfigMap(t, client, "team-a", "ROOT-1")

	// A deletion is repaired.
	if err := client.CoreV1().ConfigMaps("default").Delete(ctx, DefaultConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitConfigMap(t, client, "default", "ROOT-1")

	// A new bundle reaches every namespace.
	b.set("ROOT-1\nROOT-2")
	c.BundleChanged()
	for _, ns := range []string{"default", "kube-system", "team-a"} {
		waitConfigMap(t, client, ns, "ROOT-1\nROOT-2")
	}

	// An excluded namespace gets nothing.
	if _, err := client.CoreV1().ConfigMaps("skip").Get(ctx, DefaultConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("excluded namespace: err = %v, want NotFound", err)
	}
}

func TestNoBundleWritesNothing(t *testing.T) {
	client := fake.NewClientset(namespace("default"))
	startController(t, Config{Client: client, Bundle: func() []byte { return nil }})
	time.Sleep(300 * time.Millisecond)
	list, err := client.CoreV1().ConfigMaps("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("%d ConfigMaps written without a bundle", len(list.Items))
	}
}

func TestTerminatingNamespaceIsSkipped(t *testing.T) {
	ns := namespace("going")
	ns.Status.Phase = corev1.NamespaceTerminating
	client := fake.NewClientset(ns, namespace("default"))
	startController(t, Config{Client: client, Bundle: func() []byte { return []byte("ROOT") }})
	waitConfigMap(t, client, "default", "ROOT")
	if _, err := client.CoreV1().ConfigMaps("going").Get(context.Background(), DefaultConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("terminating namespace: err = %v, want NotFound", err)
	}
}

func TestClusterTrustBundle(t *testing.T) {
	tests := []struct {
		name   string
		served bool
	}{
		{name: "served", served: true},
		{name: "not served"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(namespace("default"))
			if tt.served {
				client.Resources = []*metav1.APIResourceList{{
					GroupVersion: "certificates.k8s.io/v1beta1",
					APIResources: []metav1.APIResource{{Name: "clustertrustbundles"}},
				}}
			}
			startController(t, Config{Client: client, Bundle: func() []byte { return []byte("ROOT") }, ClusterTrustBundleName: "castellan-root"})
			waitConfigMap(t, client, "default", "ROOT")
			ctbs := client.CertificatesV1beta1().ClusterTrustBundles()
			if !tt.served {
				if list, err := ctbs.List(context.Background(), metav1.ListOptions{}); err != nil || len(list.Items) != 0 {
					t.Fatalf("ClusterTrustBundles written although not served: %v %v", list, err)
				}
				return
			}
			testpoll.UntilNil(t, func() error {
				got, err := ctbs.Get(context.Background(), "castellan-root", metav1.GetOptions{})
				if err != nil || got.Spec.TrustBundle != "ROOT" {
					return fmt.Errorf("ClusterTrustBundle: %v, %v", got, err)
				}
				return nil
			})
		})
	}
}
