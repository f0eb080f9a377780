package saindex

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/internal/testrun"
)

func TestIndex(t *testing.T) {
	now := metav1.Now()
	client := fake.NewClientset(
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart", UID: "u1", Labels: map[string]string{"big": "label"}}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "leaving", UID: "u2", DeletionTimestamp: &now, Finalizers: []string{"x"}}},
	)
	x, err := New(Config{Client: client, Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testrun.Background(t, "service account index", x.Run)
	testpoll.Until(t, "sync", x.Synced)

	if uid, ok := x.LiveUID("shop", "cart"); !ok || uid != "u1" {
		t.Errorf("LiveUID(cart) = %q, %v", uid, ok)
	}
	if _, ok := x.LiveUID("shop", "leaving"); ok {
		t.Error("a service account being deleted is live")
	}
	if _, ok := x.LiveUID("shop", "nobody"); ok {
		t.Error("an unknown service account is live")
	}
	if err := client.CoreV1().ServiceAccounts("shop").Delete(ctx, "cart", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the deletion", func() bool { _, ok := x.LiveUID("shop", "cart"); return !ok })
	obj, ok, _ := x.informer.GetStore().GetByKey("shop/leaving")
	if sa := obj.(*corev1.ServiceAccount); !ok || sa.Labels != nil || sa.Finalizers != nil {
		t.Errorf("stored object not stripped: %+v", sa)
	}
	if err := x.Run(ctx); err == nil {
		t.Error("second Run accepted")
	}
}
