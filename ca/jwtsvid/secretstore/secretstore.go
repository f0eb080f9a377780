// Package secretstore keeps a CA's JWT-SVID signing keys and their state
// (package jwtsvid) in the CA's Kubernetes Secret, beside the X.509
// material, so that every replica of a CA signs with the same key and
// publishes the same keys, and a rotation step taken once reaches them
// all.
//
// The state is the Secret's key StateKey; each key is a PKCS#8 PEM under
// "<name>.pem" (the names start with jwtsvid.KeyNamePrefix). Every write is an update
// with the Secret's resourceVersion, so concurrent writers never lose
// each other's changes: the loser gets jwtsvid.ErrConflict, or retries a
// key creation. A state write also drops the keys it no longer names.
package secretstore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/kms"
)

// StateKey is the Secret key of the JWT key state.
const StateKey = "jwt-keys.json"

// maxRetries bounds the retries of a key creation that lost a race.
const maxRetries = 5

// Store is a jwtsvid.StateStore and jwtsvid.KeyStore over one Secret,
// which must exist (the CA's material store creates it).
type Store struct {
	// Client reaches the cluster. Required.
	Client kubernetes.Interface
	// Namespace and Name name the Secret. Required.
	Namespace, Name string
}

func (s *Store) get(ctx context.Context) (*corev1.Secret, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("secretstore: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return sec, nil
}

// update writes sec, changed by change, under its resourceVersion.
func (s *Store) update(ctx context.Context, sec *corev1.Secret, change func(data map[string][]byte)) error {
	upd := sec.DeepCopy()
	if upd.Data == nil {
		upd.Data = map[string][]byte{}
	}
	change(upd.Data)
	_, err := s.Client.CoreV1().Secrets(s.Namespace).Update(ctx, upd, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return fmt.Errorf("secretstore: Secret %s/%s: %w", s.Namespace, s.Name, jwtsvid.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("secretstore: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

// Load implements jwtsvid.StateStore.
func (s *Store) Load(ctx context.Context) (jwtsvid.State, []byte, error) {
	sec, err := s.get(ctx)
	if err != nil {
		return jwtsvid.State{}, nil, err
	}
	raw, ok := sec.Data[StateKey]
	if !ok {
		return jwtsvid.State{}, nil, fmt.Errorf("%w in Secret %s/%s", jwtsvid.ErrNoState, s.Namespace, s.Name)
	}
	st, err := jwtsvid.ParseState(fmt.Sprintf("Secret %s/%s key %s", s.Namespace, s.Name, StateKey), raw)
	return st, raw, err
}

// Save implements jwtsvid.StateStore. It also drops the JWT keys that st
// does not name.
func (s *Store) Save(ctx context.Context, st jwtsvid.State, prev []byte) error {
	b, err := jwtsvid.Encode(st)
	if err != nil {
		return err
	}
	sec, err := s.get(ctx)
	if err != nil {
		return err
	}
	if cur, ok := sec.Data[StateKey]; (ok || prev != nil) && !bytes.Equal(cur, prev) {
		return jwtsvid.ErrConflict
	}
	keep := map[string]bool{st.Active + ".pem": true, st.Next + ".pem": true, st.Previous + ".pem": true}
	return s.update(ctx, sec, func(data map[string][]byte) {
		data[StateKey] = b
		for k := range data {
			if strings.HasPrefix(k, jwtsvid.KeyNamePrefix) && strings.HasSuffix(k, ".pem") && !keep[k] {
				delete(data, k)
			}
		}
	})
}

// Open implements jwtsvid.KeyStore.
func (s *Store) Open(ctx context.Context, name string) (crypto.Signer, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	sec, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	b, ok := sec.Data[name+".pem"]
	if !ok {
		return nil, fmt.Errorf("secretstore: Secret %s/%s has no key %s.pem: %w", s.Namespace, s.Name, name, kms.ErrKeyNotFound)
	}
	key, err := pemfile.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("secretstore: Secret %s/%s key %s.pem: %w", s.Namespace, s.Name, name, err)
	}
	return key, nil
}

// Create implements jwtsvid.KeyStore: a new ECDSA P-256 key, added to the
// Secret; it never replaces a key.
func (s *Store) Create(ctx context.Context, name string) (crypto.Signer, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("secretstore: %w", err)
	}
	pemKey, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("secretstore: %w", err)
	}
	for range maxRetries {
		sec, err := s.get(ctx)
		if err != nil {
			return nil, err
		}
		if _, ok := sec.Data[name+".pem"]; ok {
			return nil, fmt.Errorf("secretstore: Secret %s/%s key %s.pem: %w", s.Namespace, s.Name, name, kms.ErrKeyExists)
		}
		err = s.update(ctx, sec, func(data map[string][]byte) { data[name+".pem"] = pemKey })
		if !errors.Is(err, jwtsvid.ErrConflict) {
			if err != nil {
				return nil, err
			}
			return key, nil
		}
	}
	return nil, fmt.Errorf("secretstore: Secret %s/%s kept changing; key %s not added", s.Namespace, s.Name, name)
}

func checkName(name string) error {
	if !strings.HasPrefix(name, jwtsvid.KeyNamePrefix) || strings.ContainsAny(name, "/\\") || len(name) > kms.MaxKeyNameLen {
		return fmt.Errorf("secretstore: JWT key name %q: want %q followed by letters and digits", name, jwtsvid.KeyNamePrefix)
	}
	return nil
}
