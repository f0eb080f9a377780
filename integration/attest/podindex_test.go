package attest_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

	c.api.DeletePod(t, ns, "web-0", false)
	c.api.DeletePod(t, ns, "web-1", true) // terminating: no longer counts
	snap = waitChange(t, c.index, changed, func(s podindex.Snapshot) bool { return !s.Has(web) })
	if !snap.Has(db) || c.index.HasServiceAccount(ns, "web") {
		t.Fatalf("after deleting web's pods: %v", snap.ServiceAccounts)
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
