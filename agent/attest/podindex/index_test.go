package podindex

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/castellan-mesh/castellan/agent/attest"
)

const node = "node-a"

func newPod(uid, ns, name, sa, nodeName string, phase string) *pod {
	return &pod{
		ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Namespace: ns, Name: name, ResourceVersion: "1",
			Labels: map[string]string{"app": name}, Annotations: map[string]string{"big": "annotation"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec:   podSpec{NodeName: nodeName, ServiceAccountName: sa},
		Status: podStatus{Phase: phase},
	}
}

const (
	pending   = "Pending"
	running   = "Running"
	succeeded = "Succeeded"
)

// handle passes obj through the informer's transform, as the informer
// does, then to the handler.
func (x *Index) handle(t *testing.T, obj *pod) {
	t.Helper()
	s, err := slim(obj)
	if err != nil {
		t.Fatal(err)
	}
	x.set(s)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestIndexTracksPodsAndServiceAccounts(t *testing.T) {
	x := newIndex(nil, node)
	web := ServiceAccount{"shop", "web"}

	snap0, changed := x.Load()
	if snap0.Has(web) || snap0.Synced {
		t.Fatalf("new index: %+v", snap0)
	}

	// A pending pod is known but its service account is not yet running.
	x.handle(t, newPod("u1", "shop", "web-0", "web", node, pending))
	if p, ok := x.PodByUID("u1"); !ok || p.Phase != attest.PodPending || p.ServiceAccount != "web" {
		t.Fatalf("PodByUID(u1) = %+v, %v", p, ok)
	}
	if x.HasServiceAccount("shop", "web") || isClosed(changed) {
		t.Fatal("a pending pod counts as running")
	}

	// Running: the set of service accounts changes.
	x.handle(t, newPod("u1", "shop", "web-0", "web", node, running))
	if !x.HasServiceAccount("shop", "web") || !isClosed(changed) {
		t.Fatal("a running pod's service account is not there, or no change was signalled")
	}
	snap1, changed := x.Load()
	if !snap1.Has(web) || snap1.Generation != snap0.Generation+1 {
		t.Fatalf("snapshot after running: %+v", snap1)
	}

	// A second pod of the same account changes the count, not the set.
	x.handle(t, newPod("u2", "shop", "web-1", "web", node, running))
	if isClosed(changed) {
		t.Fatal("a second pod of a present account signalled a change")
	}
	if snap, _ := x.Load(); snap.ServiceAccounts[web] != 2 {
		t.Fatalf("count %d, want 2", snap.ServiceAccounts[web])
	}
	if snap1.ServiceAccounts[web] != 1 {
		t.Fatal("an earlier snapshot was modified")
	}

	// A pod with no service account runs as "default".
	x.handle(t, newPod("u3", "shop", "job-0", "", node, running))
	if !x.HasServiceAccount("shop", "default") {
		t.Fatal("a pod without serviceAccountName does not count as default")
	}
	_, changed = x.Load()

	// Terminating, then deleted (as a tombstone): the account stays while
	// u2 runs, and goes with it. A terminating pod is not attested, but
	// still counts (it drains over the SVID it holds).
	term := newPod("u1", "shop", "web-0", "web", node, running)
	now := metav1.Now()
	term.DeletionTimestamp = &now
	x.handle(t, term)
	if p, _ := x.PodByUID("u1"); !p.Terminating || p.Running() || !p.Serving() {
		t.Fatalf("terminating pod: %+v", p)
	}
	if snap, _ := x.Load(); snap.ServiceAccounts[web] != 2 {
		t.Fatalf("count %d with one of two pods terminating, want 2", snap.ServiceAccounts[web])
	}
	x.delete(cache.DeletedFinalStateUnknown{Key: "shop/web-0", Obj: term})
	if _, ok := x.PodByUID("u1"); ok {
		t.Fatal("deleted pod still known")
	}
	if !x.HasServiceAccount("shop", "web") || isClosed(changed) {
		t.Fatal("the account went while another of its pods runs")
	}
	x.handle(t, newPod("u2", "shop", "web-1", "web", node, succeeded))
	if x.HasServiceAccount("shop", "web") || !isClosed(changed) {
		t.Fatal("the account stayed after its last pod terminated, or no change was signalled")
	}
	x.delete(newPod("u2", "shop", "web-1", "web", node, succeeded))
	if len(x.pods) != 1 {
		t.Fatalf("pods left: %v", x.pods)
	}

	// A pod of another node is never kept.
	x.handle(t, newPod("u9", "shop", "web-9", "web", "node-b", running))
	if _, ok := x.PodByUID("u9"); ok || x.HasServiceAccount("shop", "web") {
		t.Fatal("a pod of another node was kept")
	}
}

func TestSlimKeepsOnlyWhatAttestationNeeds(t *testing.T) {
	p := newPod("u1", "shop", "web-0", "web", node, running)
	s, err := slim(p)
	if err != nil {
		t.Fatal(err)
	}
	got := s.(*pod)
	if len(got.Labels) != 0 || len(got.Annotations) != 0 || len(got.ManagedFields) != 0 {
		t.Fatalf("slim kept more than needed: %+v", got)
	}
	if toPod(got) != toPod(p) {
		t.Fatalf("slim lost a needed field: %+v, want %+v", toPod(got), toPod(p))
	}
	if o, err := slim("not a pod"); err != nil || o != "not a pod" {
		t.Fatalf("slim of a non-pod: %v, %v", o, err)
	}
}

// TestDecodePod decodes a Pod as the API server sends it: only the fields
// read are kept, and a PodList's items are pods.
func TestDecodePod(t *testing.T) {
	if _, err := newRESTClient(&rest.Config{Host: "https://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	const podJSON = `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-0","namespace":"shop","uid":"u1","resourceVersion":"7",
		"labels":{"app":"web"},"deletionTimestamp":"2026-01-02T03:04:05Z"},
		"spec":{"nodeName":"node-a","serviceAccountName":"web","containers":[{"name":"app","image":"app"}]},
		"status":{"phase":"Running","podIP":"10.0.0.1"}}`
	dec := codecs().WithoutConversion()
	info, ok := runtime.SerializerInfoForMediaType(dec.SupportedMediaTypes(), runtime.ContentTypeJSON)
	if !ok {
		t.Fatal("no JSON serializer")
	}
	obj, _, err := dec.DecoderToVersion(info.Serializer, coreV1).Decode([]byte(podJSON), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := obj.(*pod)
	if !ok {
		t.Fatalf("decoded %T", obj)
	}
	got := toPod(p)
	want := attest.Pod{UID: "u1", Namespace: "shop", Name: "web-0", ServiceAccount: "web", NodeName: node, Phase: attest.PodRunning, Terminating: true}
	if got != want {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	list, _, err := dec.DecoderToVersion(info.Serializer, coreV1).Decode([]byte(`{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9"},"items":[`+podJSON+`]}`), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := list.(*podList); !ok || len(l.Items) != 1 || l.ResourceVersion != "9" || toPod(&l.Items[0]) != want {
		t.Fatalf("decoded list %#v", list)
	}
	if c := list.DeepCopyObject().(*podList); toPod(&c.Items[0]) != want {
		t.Fatal("DeepCopyObject lost fields")
	}
}
