package secretsequence_test

import (
	"context"
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/ca/federation"
	"github.com/castellan-mesh/castellan/ca/federation/secretsequence"
)

// TestStore: nothing stored reads as the zero state; a write is read
// back; a write from a stale read is refused as a conflict; the other
// keys of the Secret are left alone.
func TestStore(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "castellan-system", Name: "castellan-ca"},
		Data:       map[string][]byte{"ca-cert.pem": []byte("x")},
	})
	s := &secretsequence.Store{Client: client, Namespace: "castellan-system", Name: "castellan-ca"}
	st, raw, err := s.Load(ctx)
	if err != nil || raw != nil || st.Sequence != 0 {
		t.Fatalf("empty Secret: %+v, %q, %v", st, raw, err)
	}
	if err := s.Save(ctx, federation.SequenceState{Sequence: 7, Digest: "a"}, nil); err != nil {
		t.Fatal(err)
	}
	st, raw2, err := s.Load(ctx)
	if err != nil || st.Sequence != 7 || st.Digest != "a" {
		t.Fatalf("after save: %+v, %v", st, err)
	}
	if err := s.Save(ctx, federation.SequenceState{Sequence: 8, Digest: "b"}, raw); !errors.Is(err, federation.ErrSequenceConflict) {
		t.Fatalf("save from a stale read: %v", err)
	}
	if err := s.Save(ctx, federation.SequenceState{Sequence: 8, Digest: "b"}, raw2); err != nil {
		t.Fatal(err)
	}
	sec, err := client.CoreV1().Secrets("castellan-system").Get(ctx, "castellan-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["ca-cert.pem"]) != "x" {
		t.Fatal("the Secret's other keys were changed")
	}
	if _, _, err := (&secretsequence.Store{Client: client, Namespace: "castellan-system", Name: "missing"}).Load(ctx); err == nil {
		t.Fatal("a missing Secret read as no state")
	}
}
