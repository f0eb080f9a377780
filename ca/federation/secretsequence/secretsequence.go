// Package secretsequence keeps the bundle endpoint's sequence numbers
// (federation.SequenceState) in the CA's Kubernetes Secret, beside the
// X.509 material and the JWT keys, so that every replica of a CA serves
// a content of the trust domain's bundle under one spiffe_sequence.
//
// The state is the Secret's key Key. Every write is an update with the
// Secret's resourceVersion, after a check that the state is still the one
// read, so concurrent writers never lose each other's changes: the loser
// gets federation.ErrSequenceConflict, reads again, and finds the
// winner's number.
package secretsequence

import (
	"bytes"
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/castellan-mesh/castellan/ca/federation"
)

// Key is the Secret key of the sequence state.
const Key = federation.SequenceFileName

// Store is a federation.SequenceStore over one Secret, which must exist
// (the CA's material store creates it).
type Store struct {
	// Client reaches the cluster. Required.
	Client kubernetes.Interface
	// Namespace and Name name the Secret. Required.
	Namespace, Name string
}

// Load implements federation.SequenceStore.
func (s *Store) Load(ctx context.Context) (federation.SequenceState, []byte, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return federation.SequenceState{}, nil, fmt.Errorf("secretsequence: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	raw, ok := sec.Data[Key]
	if !ok {
		return federation.SequenceState{}, nil, nil
	}
	st, err := federation.ParseSequenceState(fmt.Sprintf("Secret %s/%s key %s", s.Namespace, s.Name, Key), raw)
	return st, raw, err
}

// Save implements federation.SequenceStore.
func (s *Store) Save(ctx context.Context, st federation.SequenceState, prev []byte) error {
	b, err := federation.EncodeSequenceState(st)
	if err != nil {
		return err
	}
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	sec, err := secrets.Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("secretsequence: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	if cur, ok := sec.Data[Key]; (ok || prev != nil) && !bytes.Equal(cur, prev) {
		return federation.ErrSequenceConflict
	}
	upd := sec.DeepCopy()
	if upd.Data == nil {
		upd.Data = map[string][]byte{}
	}
	upd.Data[Key] = b
	_, err = secrets.Update(ctx, upd, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err):
		// The Secret changed meanwhile, perhaps for another key (a JWT
		// key, the X.509 material): the caller reads again and retries.
		return fmt.Errorf("secretsequence: Secret %s/%s: %w", s.Namespace, s.Name, federation.ErrSequenceConflict)
	case err != nil:
		return fmt.Errorf("secretsequence: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}
