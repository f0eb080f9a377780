package svidstore_test

import (
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
)

const id = "spiffe://cluster.local/ns/default/sa/web"

func TestStoreNotifiesOnChange(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	s := svidstore.New()
	defer s.Close()

	snap, changed := s.Load()
	if snap.SVID != nil || snap.Bundle != nil || snap.Generation != 0 {
		t.Fatalf("new store is not empty: %+v", snap)
	}

	svid := ca.Issue(t, id, time.Hour)
	if !s.SetSVID(svid) {
		t.Fatal("SetSVID refused a valid SVID")
	}
	waitClosed(t, changed)
	snap, changed = s.Load()
	if snap.SVID != svid || snap.Generation != 1 {
		t.Fatalf("after SetSVID: got generation %d, svid %v", snap.Generation, snap.SVID)
	}

	// The same content again changes nothing.
	s.SetSVID(svid)
	s.SetBundle(ca.Bundle(t))
	waitClosed(t, changed)
	snap, changed = s.Load()
	if snap.Generation != 2 || snap.Bundle == nil {
		t.Fatalf("after SetBundle: generation %d, bundle %v", snap.Generation, snap.Bundle)
	}
	s.SetBundle(ca.Bundle(t))
	select {
	case <-changed:
		t.Fatal("setting the same bundle again notified subscribers")
	default:
	}
}

func TestStoreDropsExpiredSVID(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	s := svidstore.New()
	defer s.Close()

	if s.SetSVID(ca.Issue(t, id, -time.Second)) {
		t.Fatal("SetSVID accepted an expired SVID")
	}
	svid := ca.Issue(t, id, 2*time.Second) // X.509 times have whole seconds
	s.SetSVID(svid)
	snap, changed := s.Load()
	if snap.SVID == nil {
		t.Fatal("valid SVID not served")
	}
	waitClosed(t, changed)
	if snap, _ := s.Load(); snap.SVID != nil {
		t.Fatalf("expired SVID still served (NotAfter %s)", snap.SVID.NotAfter)
	}
}

func TestParseBundle(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	good := ca.Bundle(t).PEM
	leaf := ca.Issue(t, id, time.Hour)
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{name: "one root", in: good},
		{name: "two roots", in: append(append([]byte{}, good...), svidstoretest.NewCA(t, "other").Bundle(t).PEM...)},
		{name: "empty", in: nil, wantErr: true},
		{name: "garbage", in: []byte("not pem"), wantErr: true},
		{name: "trailing garbage", in: append(append([]byte{}, good...), "junk"...), wantErr: true},
		{name: "private key block", in: leaf.KeyPEM, wantErr: true},
		{name: "leaf is not a CA", in: leaf.ChainPEM, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := svidstore.ParseBundle(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseBundle: err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && len(b.Certificates) == 0 {
				t.Fatal("no certificates")
			}
		})
	}
}

func FuzzParseBundle(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := svidstore.ParseBundle(in)
		if err == nil && len(b.Certificates) == 0 {
			t.Fatal("accepted a bundle without certificates")
		}
	})
}

func waitClosed(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("change not signalled")
	}
}

func TestWithdraw(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	s := svidstore.New()
	defer s.Close()
	s.SetSVID(ca.Issue(t, id, time.Hour))
	s.SetBundle(ca.Bundle(t))
	_, changed := s.Load()

	s.Withdraw("no running pod with service account default/web on this node")
	waitClosed(t, changed)
	snap, changed := s.Load()
	if snap.SVID != nil || snap.Bundle == nil || snap.Withdrawn == "" {
		t.Fatalf("after Withdraw: svid %v, bundle %v, withdrawn %q", snap.SVID, snap.Bundle, snap.Withdrawn)
	}
	if s.SetSVID(ca.Issue(t, id, time.Hour)) {
		t.Fatal("SetSVID installed an SVID after Withdraw")
	}
	s.Withdraw("again")
	select {
	case <-changed:
		t.Fatal("a second Withdraw notified subscribers")
	default:
	}
	if snap, _ := s.Load(); snap.SVID != nil || snap.Withdrawn == "again" {
		t.Fatalf("after a second Withdraw: %+v", snap)
	}
}

// TestLoadPairsChannelWithGeneration: the channel Load returns belongs to
// the snapshot returned with it, even while changes race with the Load: it
// is closed only once the generation has moved past the snapshot's, so a
// subscriber is never woken for a snapshot it already has.
func TestLoadPairsChannelWithGeneration(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	s := svidstore.New()
	defer s.Close()
	bundles := []*svidstore.Bundle{ca.Bundle(t), svidstoretest.NewCA(t, "other").Bundle(t)}

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			s.SetBundle(bundles[i%2])
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		snap, changed := s.Load()
		select {
		case <-changed:
			if next, _ := s.Load(); next.Generation <= snap.Generation {
				t.Fatalf("channel of generation %d closed, but the store is still at %d", snap.Generation, next.Generation)
			}
		default:
		}
	}
}
