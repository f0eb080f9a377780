package attest_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/attest/podindex"
)

// TestPodIndexServiceAccounts follows the service accounts with running
// pods on node A through the real API server's watch: a pod of node B
// never counts, a pending pod counts once it runs, and the account goes,
// with a change signalled, when its last pod is deleted.
func TestPodIndexServiceAccounts(t *testing.T) {
	c := startCluster(t)
	web := podindex.ServiceAccount{Namespace: ns, Name: "web"}
	db := podindex.ServiceAccount{Namespace: ns, Name: "db"}

	c.createPod(t, "web-0", "web", nodeA, corev1.PodRunning)
	c.createPod(t, "web-1", "web", nodeA, corev1.PodRunning)
	c.createPod(t, "db-9", "db", nodeB, corev1.PodRunning)
	pending := c.createPod(t, "db-0", "db", nodeA, corev1.PodPending)

	snap, changed := c.index.Load()
	if !snap.Has(web) || snap.ServiceAccounts[web] != 2 || snap.Has(db) {
		t.Fatalf("service accounts of node A: %v", snap.ServiceAccounts)
	}
	if c.index.HasServiceAccount(ns, "db") {
		t.Fatal("a pod of node B or a pending pod counts on node A")
	}

	pending.Status.Phase = corev1.PodRunning
	if _, err := c.api.Client.CoreV1().Pods(ns).UpdateStatus(t.Context(), pending.Pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = waitChange(t, c.index, changed, func(s podindex.Snapshot) bool { return s.Has(db) })
	changed = nextChange(c.index, snap)

	// A pod being deleted still counts (its proxy drains over the SVID it
	// holds) until it leaves phase Running: there is no kubelet here, so
	// the test ends it as a kubelet would, with status Succeeded.
	c.api.DeletePod(t, ns, "web-0", false)
	c.api.DeletePod(t, ns, "web-1", true)
	waitPod := func(cond func(p *corev1.Pod) bool) *corev1.Pod {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for {
			p, err := c.api.Client.CoreV1().Pods(ns).Get(t.Context(), "web-1", metav1.GetOptions{})
			if err == nil && cond(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("web-1: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	terminating := waitPod(func(p *corev1.Pod) bool { return p.DeletionTimestamp != nil })
	c.waitPod(t, string(terminating.UID), func(p attest.Pod, ok bool) bool { return ok && p.Terminating })
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(20 * time.Millisecond) {
		if snap, _ := c.index.Load(); snap.ServiceAccounts[web] == 1 {
			break
		}
		if time.Now().After(deadline) {
			now, _ := c.index.Load()
			t.Fatalf("web-0 still counted: %v", now.ServiceAccounts)
		}
	}
	if !c.index.HasServiceAccount(ns, "web") {
		t.Fatal("a terminating pod still in phase Running does not count")
	}
	snap, changed = c.index.Load()
	terminating.Status.Phase = corev1.PodSucceeded
	if _, err := c.api.Client.CoreV1().Pods(ns).UpdateStatus(t.Context(), terminating, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = waitChange(t, c.index, changed, func(s podindex.Snapshot) bool { return !s.Has(web) })
	if !snap.Has(db) || c.index.HasServiceAccount(ns, "web") {
		t.Fatalf("after web's pods ended: %v", snap.ServiceAccounts)
	}
}

// waitChange waits for changes of the index until cond holds.
func waitChange(t *testing.T, x *podindex.Index, changed <-chan struct{}, cond func(podindex.Snapshot) bool) podindex.Snapshot {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case <-changed:
		case <-timeout:
			snap, _ := x.Load()
			t.Fatalf("no change to the awaited state; service accounts: %v", snap.ServiceAccounts)
		}
		var snap podindex.Snapshot
		snap, changed = x.Load()
		if cond(snap) {
			return snap
		}
	}
}

// nextChange returns the channel of the snapshot after snap.
func nextChange(x *podindex.Index, snap podindex.Snapshot) <-chan struct{} {
	cur, changed := x.Load()
	if cur.Generation != snap.Generation {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return changed
}
