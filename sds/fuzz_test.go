package sds

import (
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
)

// FuzzStreamRequests feeds arbitrary requests to the state-of-the-world and
// delta stream state machines. Whatever a client sends, the server must not
// panic, and must send only resources the stream is subscribed to, each at
// most once per version.
func FuzzStreamRequests(f *testing.F) {
	seeds := []proto.Message{
		&discoveryv3.DiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNames: []string{DefaultSecretName}},
		&discoveryv3.DiscoveryRequest{ResourceNames: []string{"*", "nope"}, ResponseNonce: "1"},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNamesSubscribe: []string{RootCASecretName}, InitialResourceVersions: map[string]string{RootCASecretName: "x"}},
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, b)
	}
	ca := svidstoretest.NewCA(f, "fuzz root")
	store := svidstore.New()
	defer store.Close()
	store.SetSVID(ca.Issue(f, "spiffe://cluster.local/ns/a/sa/b", time.Hour))
	store.SetBundle(ca.Bundle(f))
	srv, err := New(store)
	if err != nil {
		f.Fatal(err)
	}
	snap, _ := store.Load()

	f.Fuzz(func(t *testing.T, first, second []byte) {
		sotw, delta := newSotwStream(srv), newDeltaStream(srv)
		// Each request is applied to a stream that is up to date, so one
		// that reports no change must leave nothing to send: the handler
		// only wakes the pusher on a change.
		for _, b := range [][]byte{first, second} {
			var req discoveryv3.DiscoveryRequest
			if proto.Unmarshal(b, &req) == nil {
				if changed, err := sotw.handle(&req); err == nil {
					checkSotW(t, sotw, snap, changed)
				}
			}
			var dreq discoveryv3.DeltaDiscoveryRequest
			if proto.Unmarshal(b, &dreq) == nil {
				if changed, err := delta.handle(&dreq); err == nil {
					checkDelta(t, delta, snap, changed)
				}
			}
		}
	})
}

func checkSotW(t *testing.T, st *sotwStream, snap svidstore.Snapshot, changed bool) {
	resp := st.next(&feed{}, snap)
	if resp == nil {
		return
	}
	if !changed {
		t.Fatal("sotw has a response for a request that changed nothing")
	}
	for name := range st.versions {
		if !st.covers(name) {
			t.Fatalf("sotw sent %q without a subscription", name)
		}
	}
	if st.next(&feed{}, snap) != nil {
		t.Fatal("sotw would send the same state twice")
	}
}

func checkDelta(t *testing.T, st *deltaStream, snap svidstore.Snapshot, changed bool) {
	resp := st.next(&feed{}, snap)
	if resp == nil {
		return
	}
	if !changed {
		t.Fatal("delta has a response for a request that changed nothing")
	}
	for _, r := range resp.GetResources() {
		if !st.covers(r.GetName()) {
			t.Fatalf("delta sent %q without a subscription", r.GetName())
		}
	}
	if st.next(&feed{}, snap) != nil {
		t.Fatal("delta would send the same state twice")
	}
}
