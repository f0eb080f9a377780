package secretstore_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/jwtsvid/secretstore"
	"github.com/castellan-mesh/castellan/kms"
)

func newStore(t *testing.T) (*secretstore.Store, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "castellan-system", Name: "castellan-ca"},
		Data:       map[string][]byte{"ca-cert.pem": []byte("x")},
	})
	return &secretstore.Store{Client: client, Namespace: "castellan-system", Name: "castellan-ca"}, client
}

func open(t *testing.T, s *secretstore.Store) *jwtsvid.KeySet {
	t.Helper()
	ks, err := jwtsvid.Open(context.Background(), jwtsvid.Config{State: s, Keys: s, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// jwtKeys returns the JWT keys held in the Secret, and checks that the
// rest of it was left alone.
func jwtKeys(t *testing.T, client *fake.Clientset) []string {
	t.Helper()
	sec, err := client.CoreV1().Secrets("castellan-system").Get(context.Background(), "castellan-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["ca-cert.pem"]) != "x" {
		t.Fatal("the X.509 material of the Secret changed")
	}
	var out []string
	for k := range sec.Data {
		if strings.HasPrefix(k, jwtsvid.KeyNamePrefix) && strings.HasSuffix(k, ".pem") {
			out = append(out, k)
		}
	}
	return out
}

// TestReplicasShareKeys: a second replica opening the same Secret signs
// with the first one's key, and a rotation through the Secret reaches
// both, with the Secret holding only the keys the state names.
func TestReplicasShareKeys(t *testing.T) {
	ctx := context.Background()
	s, client := newStore(t)
	a, b := open(t, s), open(t, s)
	if a.Keys().Active.ID != b.Keys().Active.ID {
		t.Fatal("two replicas sign with different keys")
	}
	if n := len(jwtKeys(t, client)); n != 1 {
		t.Fatalf("%d JWT keys in the Secret, want 1", n)
	}
	first := a.Keys().Active.ID
	r := &jwtsvid.Rotator{State: s, Keys: s}
	for _, step := range []func() error{
		func() error { return r.Prepare(ctx) },
		func() error { return r.Activate(ctx, true) },
		func() error { return r.Retire(ctx, true) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, ks := range []*jwtsvid.KeySet{a, b} {
		if _, err := ks.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if ks.Keys().Active.ID == first || len(ks.JWTAuthorities()) != 1 {
			t.Fatalf("after the rotation: active %s, %d authorities", ks.Keys().Active.ID, len(ks.JWTAuthorities()))
		}
	}
	if n := len(jwtKeys(t, client)); n != 1 {
		t.Fatalf("%d JWT keys in the Secret after retirement, want 1", n)
	}
}

func TestSaveRefusesStaleState(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	open(t, s)
	st, raw, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, st, nil); !errors.Is(err, jwtsvid.ErrConflict) {
		t.Fatalf("Save over a state read as absent: %v, want ErrConflict", err)
	}
	if err := s.Save(ctx, st, append([]byte(nil), raw[:len(raw)-1]...)); !errors.Is(err, jwtsvid.ErrConflict) {
		t.Fatalf("Save over another state: %v, want ErrConflict", err)
	}
	if err := s.Save(ctx, st, raw); err != nil {
		t.Fatalf("Save over the state read: %v", err)
	}
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if _, err := s.Open(ctx, jwtsvid.KeyNamePrefix+"none"); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Fatalf("Open of a missing key: %v", err)
	}
	if _, err := s.Create(ctx, jwtsvid.KeyNamePrefix+"a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, jwtsvid.KeyNamePrefix+"a"); !errors.Is(err, kms.ErrKeyExists) {
		t.Fatalf("Create over a key: %v", err)
	}
	for _, name := range []string{"ca-key", "jwt-../x", ""} {
		if _, err := s.Create(ctx, name); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	if _, _, err := s.Load(ctx); !errors.Is(err, jwtsvid.ErrNoState) {
		t.Fatalf("Load with no state: %v", err)
	}
}
