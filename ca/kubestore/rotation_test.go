package kubestore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestRotationSteps(t *testing.T) {
	client := fake.NewClientset()
	cfg := fastConfig(client, "a")
	cfg.RootTTL = 48 * time.Hour
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.ensureSecret(ctx); err != nil {
		t.Fatal(err)
	}
	r := s.Rotation(rotation.Policy{PropagationDelay: time.Hour, MaxTTL: 2 * time.Hour, RetireMargin: time.Minute})
	oldRoot := s.Authority().Cert
	// A replica that does not hold the Lease takes no step, even when one
	// is due.
	s.now = func() time.Time { return oldRoot.NotAfter.Add(-time.Hour) }
	if got, err := r.Step(ctx, 24*time.Hour); got != "" || err != nil {
		t.Fatalf("step of a replica not leading = %q, %v; want nothing", got, err)
	}
	s.leading.Store(true)
	step := func(at time.Time, want string) {
		t.Helper()
		s.now = func() time.Time { return at }
		got, err := r.Step(ctx, 24*time.Hour)
		if err != nil {
			t.Fatalf("step at %v: %v", at, err)
		}
		if got != want {
			t.Fatalf("step at %v = %q, want %q", at, got, want)
		}
		// The status of the rotation, as the metrics and "castellan ca
		// rotate status" report it, follows each step.
		st, err := r.Status(ctx)
		if err != nil {
			t.Fatalf("status at %v: %v", at, err)
		}
		wantPhase := map[string]rotation.Phase{"": st.Phase, "prepare": rotation.PhasePrepared, "activate": rotation.PhaseActivated, "retire": rotation.PhaseSteady}[want]
		if st.Mode != rotation.ModeKubernetes || st.Phase != wantPhase || len(st.Roots) != len(s.Authority().Roots) {
			t.Fatalf("status after %q: %s/%s with %d roots", want, st.Mode, st.Phase, len(st.Roots))
		}
		for _, r := range st.Roots {
			if (r.State == rotation.RootActive) != r.Cert.Equal(s.Authority().Root()) {
				t.Fatalf("status after %q: root %s is %s", want, r.Serial, r.State)
			}
			if r.State == rotation.RootPrepared && st.Phase != rotation.PhasePrepared {
				t.Fatalf("status after %q: a prepared root in phase %s", want, st.Phase)
			}
		}
	}

	t0 := time.Now()
	step(t0, "")                                 // 48h left, rotation at 24h
	due := oldRoot.NotAfter.Add(-23 * time.Hour) // less than 24h left
	changed := s.Changed()
	step(due, "prepare")
	select {
	case <-changed: // the Secret the step wrote was loaded and signalled
	default:
		t.Fatal("the prepared material was not signalled to Changed")
	}
	a := s.Authority()
	if !a.Cert.Equal(oldRoot) || len(a.Roots) != 2 {
		t.Fatalf("after prepare: signs with the new root %v, or bundle has %d roots", !a.Cert.Equal(oldRoot), len(a.Roots))
	}
	newRoot := a.Roots[1]
	// A leaf signed by the old root before activation.
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oldLeaf, err := ca.IssueServingCertificate(a, leafKey.Public(), []string{"x"}, time.Hour, due)
	if err != nil {
		t.Fatal(err)
	}

	step(due.Add(30*time.Minute), "") // still propagating
	step(due.Add(time.Hour), "activate")
	a = s.Authority()
	if !a.Cert.Equal(newRoot) || len(a.Roots) != 2 {
		t.Fatal("after activate: not signing with the new root, or the old root left the bundle")
	}
	pool := x509.NewCertPool()
	for _, r := range a.Roots {
		pool.AddCert(r)
	}
	if _, err := oldLeaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: due.Add(time.Hour), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("a leaf of the old root no longer verifies against the bundle: %v", err)
	}

	step(due.Add(2*time.Hour), "") // old leaves may still be valid
	step(due.Add(3*time.Hour+2*time.Minute), "retire")
	a = s.Authority()
	if len(a.Roots) != 1 || !a.Root().Equal(newRoot) {
		t.Fatal("after retire: the bundle does not hold only the new root")
	}
	sec, err := client.CoreV1().Secrets(testNS).Get(ctx, DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Annotations[RotationPhaseAnnotation]; ok || len(sec.Data[NextCAKeyKey]) != 0 {
		t.Fatalf("rotation state left behind: %v", sec.Annotations)
	}
	step(due.Add(4*time.Hour), "") // the new root has 48h: nothing due
}

func TestRotationLeavesPluggedInMaterialAlone(t *testing.T) {
	root, rootKey := newRoot(t)
	client := fake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultSecretName, Namespace: testNS},
		Data:       map[string][]byte{CACertKey: pemOf(root), CAKeyKey: keyPEM(t, rootKey)},
	})
	cfg := fastConfig(client, "a")
	cfg.RootTTL = 200 * 365 * 24 * time.Hour
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ensureSecret(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.leading.Store(true)
	// Always due, were it ours.
	if got, err := s.Rotation(rotation.Policy{}).Step(context.Background(), 100*365*24*time.Hour); err != nil || got != "" {
		t.Fatalf("Step on plugged-in material = %q, %v; want nothing", got, err)
	}
}

// TestManualRotation takes the steps by hand, as "castellan ca rotate
// --material=kubernetes" does: each refuses out of phase or before it is
// safe, unless forced, and the Store picks each step up.
func TestManualRotation(t *testing.T) {
	client := fake.NewClientset()
	s, err := New(fastConfig(client, "a"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.ensureSecret(ctx); err != nil {
		t.Fatal(err)
	}
	old := s.Authority().Cert
	r := &rotation.Engine{Backend: &SecretBackend{Client: client, Namespace: testNS, SecretName: DefaultSecretName, TrustDomain: testTD},
		Policy: rotation.Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour}}
	steps := []struct {
		name    string
		do      func() error
		wantErr string
		phase   rotation.Phase
	}{
		{"activate before prepare", func() error { return r.Activate(ctx, true) }, "nothing to activate", rotation.PhaseSteady},
		{"prepare from a directory", func() error { return r.Prepare(ctx, "/tmp/cacerts") }, "generated", rotation.PhaseSteady},
		{"prepare", func() error { return r.Prepare(ctx, "") }, "", rotation.PhasePrepared},
		{"prepare twice", func() error { return r.Prepare(ctx, "") }, "already in progress", rotation.PhasePrepared},
		{"early activate", func() error { return r.Activate(ctx, false) }, "wait until", rotation.PhasePrepared},
		{"forced activate", func() error { return r.Activate(ctx, true) }, "", rotation.PhaseActivated},
		{"early retire", func() error { return r.Retire(ctx, false) }, "may be valid until", rotation.PhaseActivated},
		{"forced retire", func() error { return r.Retire(ctx, true) }, "", rotation.PhaseSteady},
	}
	for _, st := range steps {
		err := st.do()
		if (st.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), st.wantErr)) {
			t.Fatalf("%s: %v, want error %q", st.name, err, st.wantErr)
		}
		status, err := r.Status(ctx)
		if err != nil || status.Phase != st.phase {
			t.Fatalf("%s: status %+v, %v; want phase %s", st.name, status, err, st.phase)
		}
		if err := s.readOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a := s.Authority(); a.Cert.Equal(old) || len(a.Roots) != 1 {
		t.Fatal("after the manual rotation the old root still signs or is trusted")
	}
}

// TestStatusReadsTheWatchedSecret: the status a scrape asks for, and a
// replica's check for a due step, come from the Secret the Store last saw,
// not from a read of the API server each time; once the Secret is gone
// they read it again.
func TestStatusReadsTheWatchedSecret(t *testing.T) {
	client := fake.NewClientset()
	s, err := New(fastConfig(client, "a"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.ensureSecret(ctx); err != nil {
		t.Fatal(err)
	}
	r := s.Rotation(rotation.Policy{})
	gets := func() int {
		n := 0
		for _, a := range client.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "secrets" {
				n++
			}
		}
		return n
	}
	before := gets()
	for range 3 {
		if _, err := r.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Step(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n := gets() - before; n != 0 {
		t.Fatalf("status and step checks read the Secret %d times, want 0 (the watched copy)", n)
	}
	s.markLost()
	if _, err := r.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := gets() - before; n != 1 {
		t.Fatalf("after the Secret was lost: %d reads, want 1", n)
	}
}
