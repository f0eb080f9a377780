package nodeauth

import (
	"context"
	"fmt"
	"testing"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/internal/testrun"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func testPod(ns, name, uid, node, sa string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), Labels: map[string]string{"app": name},
			Annotations: map[string]string{"big": string(make([]byte, 4096))}},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}}},
		Status: corev1.PodStatus{Phase: phase},
	}
}

func TestPodIndex(t *testing.T) {
	client := fake.NewClientset(
		testPod("shop", "web-1", "uid-w1", "node-a", "web", corev1.PodRunning),
		testPod("shop", "db-1", "uid-d1", "node-b", "db", corev1.PodRunning),
		testPod("shop", "job-1", "uid-j1", "node-a", "job", corev1.PodSucceeded),
		testPod("shop", "new-1", "uid-n1", "", "new", corev1.PodPending),
	)
	reg := prometheus.NewPedanticRegistry()
	x, err := NewPodIndex(PodIndexConfig{Client: client, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if x.Synced() {
		t.Fatal("synced before Run")
	}
	ctx := testrun.Background(t, "pod index", x.Run)
	if err := x.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "Synced", x.Synced)
	if err := x.Run(ctx); err == nil {
		t.Error("second Run accepted")
	}

	// Stored pods are stripped to the fields of Pod.
	p, ok := x.Pod("shop", "web-1")
	want := Pod{Namespace: "shop", Name: "web-1", UID: "uid-w1", NodeName: "node-a", ServiceAccount: "web", Phase: corev1.PodRunning}
	if !ok || p != want {
		t.Fatalf("Pod(shop, web-1) = %+v, %v; want %+v", p, ok, want)
	}
	obj, _, _ := x.informer.GetStore().GetByKey("shop/web-1")
	if r, ok := obj.(*podRecord); !ok || r.Labels != nil || r.Annotations != nil {
		t.Fatalf("stored object %T %+v is not a stripped podRecord", obj, obj)
	}
	if uid, ok := x.LiveUID("shop", "db-1"); !ok || uid != "uid-d1" {
		t.Errorf("LiveUID(shop, db-1) = %q, %v", uid, ok)
	}
	if _, ok := x.LiveUID("shop", "nope"); ok {
		t.Error("LiveUID of a missing pod")
	}

	checks := []struct {
		node, ns, sa string
		want         bool
	}{
		{"node-a", "shop", "web", true},
		{"node-b", "shop", "web", false},
		{"node-b", "shop", "db", true},
		{"node-a", "shop", "job", false}, // succeeded
		{"", "shop", "new", false},       // unscheduled
		{"node-a", "other", "web", false},
	}
	for _, c := range checks {
		if got := x.ActiveOnNode(c.node, ServiceAccount{c.ns, c.sa}); got != c.want {
			t.Errorf("ActiveOnNode(%s, %s/%s) = %v, want %v", c.node, c.ns, c.sa, got, c.want)
		}
	}
	if n := testmetric.Sum(t, reg, "castellan_ca_pod_index_pods", ""); n != 4 {
		t.Errorf("castellan_ca_pod_index_pods = %v, want 4", n)
	}

	// Changes are followed: a deleted pod goes, a replaced pod has its new
	// UID, a pod that finishes no longer counts as active.
	pods := client.CoreV1().Pods("shop")
	if err := pods.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, testPod("shop", "web-1", "uid-w1-new", "node-b", "web", corev1.PodRunning), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the replaced pod", func() bool { uid, _ := x.LiveUID("shop", "web-1"); return uid == "uid-w1-new" })
	if x.ActiveOnNode("node-a", ServiceAccount{"shop", "web"}) || !x.ActiveOnNode("node-b", ServiceAccount{"shop", "web"}) {
		t.Error("the index did not follow web-1 to node-b")
	}
	db := testPod("shop", "db-1", "uid-d1", "node-b", "db", corev1.PodFailed)
	if _, err := pods.UpdateStatus(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "db-1 to fail", func() bool { return !x.ActiveOnNode("node-b", ServiceAccount{"shop", "db"}) })
	// A pod being deleted is still there, but no longer live.
	now := metav1.Now()
	db.DeletionTimestamp = &now
	if _, err := pods.Update(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "db-1 to be deleting", func() bool { _, ok := x.LiveUID("shop", "db-1"); return !ok })
	if p, ok := x.Pod("shop", "db-1"); !ok || !p.Deleting {
		t.Errorf("Pod(shop, db-1) = %+v, %v; want it deleting", p, ok)
	}
	if err := pods.Delete(ctx, "db-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "db-1 to go", func() bool { _, ok := x.Pod("shop", "db-1"); return !ok })
}

func TestNewPodIndexConfig(t *testing.T) {
	if _, err := NewPodIndex(PodIndexConfig{}); err == nil {
		t.Fatal("NewPodIndex accepted no client")
	}
}

// BenchmarkAuthorizeImpersonation measures one decision against an index
// of 10,000 pods on 100 nodes:
//
//	go test ./ca/nodeauth -run '^$' -bench AuthorizeImpersonation -benchmem
func BenchmarkAuthorizeImpersonation(b *testing.B) {
	client := fake.NewClientset()
	ctx := context.Background()
	for i := range 10000 {
		p := testPod(fmt.Sprintf("team-%d", i%10), fmt.Sprintf("pod-%d", i), fmt.Sprintf("uid-%d", i), fmt.Sprintf("node-%d", i%100), fmt.Sprintf("svc-%d", i%30), corev1.PodRunning)
		p.Annotations = nil
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	agent := testPod("castellan-system", "agent-7", "uid-agent", "node-7", "castellan-agent", corev1.PodRunning)
	if _, err := client.CoreV1().Pods(agent.Namespace).Create(ctx, agent, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	x, err := NewPodIndex(PodIndexConfig{Client: client})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = x.Run(ctx) }()
	if err := x.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	a, err := New(Config{TrustDomain: td, NodeAgents: []ServiceAccount{{"castellan-system", "castellan-agent"}}, Pods: x})
	if err != nil {
		b.Fatal(err)
	}
	caller := authn.Caller{Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "agent-7", PodUID: "uid-agent", NodeName: "node-7"}
	// pod-7 (team-7, svc-7) is on node-7.
	target := spiffeid.RequireFromPath(td, "/ns/team-7/sa/svc-7")
	if err := a.AuthorizeImpersonation(ctx, caller, target); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := a.AuthorizeImpersonation(ctx, caller, target); err != nil {
			b.Fatal(err)
		}
	}
}
