package kubestore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A self-signed root that the Store created is rotated by the leader in
// three steps, each one update of the Secret that every replica picks up:
//
//  1. prepare: a new root and key are stored under NextCACertKey and
//     NextCAKeyKey, and the new root joins root-cert.pem. Replicas still
//     sign with the old root; the trust bundle, published everywhere, now
//     holds both.
//  2. activate, PropagationDelay later: the new root becomes ca-cert.pem
//     and signs. The old root stays in the bundle, so SVIDs it signed still
//     verify.
//  3. retire, once every SVID the old root signed has expired (MaxLeafTTL
//     and RetireMargin after activation): root-cert.pem holds only the new
//     root.
//
// The phase and its deadline are annotations on the Secret, so a new
// leader takes over a rotation where the old one left it.

// Keys and annotations of a rotation in progress.
const (
	NextCACertKey = "next-ca-cert.pem"
	NextCAKeyKey  = "next-ca-key.pem"

	RotationPhaseAnnotation = "castellan.io/rotation-phase"
	ActivateAfterAnnotation = "castellan.io/activate-after"
	RetireAfterAnnotation   = "castellan.io/retire-after"
)

// Rotation phases, the values of RotationPhaseAnnotation (see package
// rotation); no annotation is the steady phase.
const (
	PhasePrepared  = string(rotation.PhasePrepared)
	PhaseActivated = string(rotation.PhaseActivated)
)

// DefaultRotationInterval is how often the leader checks for a due step.
const DefaultRotationInterval = time.Minute

// policy is the rotation policy of the Store's Config.
func (s *Store) policy() rotation.Policy {
	return rotation.Policy{PropagationDelay: s.cfg.PropagationDelay, MaxTTL: s.cfg.MaxLeafTTL, RetireMargin: s.cfg.RetireMargin}
}

// rotate runs rotation steps every RotationInterval until ctx ends. It is
// a leader job.
func (s *Store) rotate(ctx context.Context) error {
	return rotation.Run(ctx, s.cfg.RotationInterval, s.RotationStep, s.log, func(step string) {
		s.metrics.rotations.WithLabelValues(step).Inc()
	})
}

// RotationStep takes the next root rotation step if one is due, and says
// which ("prepare", "activate", "retire", or "" for none). Only the leader
// calls it; the Secret's resourceVersion guards against a stale leader.
func (s *Store) RotationStep(ctx context.Context) (string, error) {
	secrets := s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace)
	sec, err := secrets.Get(ctx, s.cfg.SecretName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation: read Secret: %w", err)
	}
	now := s.now()
	upd := sec.DeepCopy()
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	var step string
	switch phase := sec.Annotations[RotationPhaseAnnotation]; phase {
	case "":
		if step, err = s.prepare(upd, now); err != nil || step == "" {
			return "", err
		}
	case PhasePrepared:
		after, err := annotationTime(sec, ActivateAfterAnnotation)
		if err != nil || now.Before(after) {
			return "", err
		}
		if err := activate(upd); err != nil {
			return "", err
		}
		upd.Annotations[RotationPhaseAnnotation] = PhaseActivated
		upd.Annotations[RetireAfterAnnotation] = s.policy().RetireAfter(now).UTC().Format(time.RFC3339)
		delete(upd.Annotations, ActivateAfterAnnotation)
		step = "activate"
	case PhaseActivated:
		after, err := annotationTime(sec, RetireAfterAnnotation)
		if err != nil || now.Before(after) {
			return "", err
		}
		if err := retire(upd); err != nil {
			return "", err
		}
		delete(upd.Annotations, RotationPhaseAnnotation)
		delete(upd.Annotations, RetireAfterAnnotation)
		step = "retire"
	default:
		return "", fmt.Errorf("kubestore: rotation: unknown phase %q in annotation %s", phase, RotationPhaseAnnotation)
	}
	// The new content must load before it is written.
	if _, err := decodeAuthority(upd.Data, s.cfg.Signer); err != nil {
		return "", fmt.Errorf("kubestore: rotation %s: the new material does not load: %w", step, err)
	}
	written, err := secrets.Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation %s: update Secret: %w", step, err)
	}
	s.observe(written)
	return step, nil
}

// prepare adds a new root to upd when the active one is due for rotation.
// Only a self-signed root the Store created, with its key in the Secret,
// is rotated; plugged-in material is the operator's to replace.
func (s *Store) prepare(upd *corev1.Secret, now time.Time) (string, error) {
	if s.cfg.RotateBefore <= 0 || s.cfg.Signer != nil || upd.Labels[ManagedByLabel] != ManagedByValue {
		return "", nil
	}
	a, err := decodeAuthority(upd.Data, nil)
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation: %w", err)
	}
	if len(a.Chain) != 0 || !ca.IsSelfSigned(a.Cert) || a.Cert.NotAfter.Sub(now) >= s.cfg.RotateBefore {
		return "", nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation: generate root key: %w", err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: s.cfg.TrustDomain, TTL: s.cfg.RootTTL, NotBefore: now.Add(-time.Minute)})
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation: %w", err)
	}
	keyPEM, err := pemfile.EncodePrivateKey(crypto.Signer(key))
	if err != nil {
		return "", fmt.Errorf("kubestore: rotation: %w", err)
	}
	upd.Data[NextCACertKey] = pemfile.EncodeCertificates([]*x509.Certificate{root})
	upd.Data[NextCAKeyKey] = keyPEM
	upd.Data[RootCertKey] = pemfile.EncodeCertificates(append(a.Roots, root))
	upd.Annotations[RotationPhaseAnnotation] = PhasePrepared
	upd.Annotations[ActivateAfterAnnotation] = s.policy().ActivateAfter(now).UTC().Format(time.RFC3339)
	return "prepare", nil
}

// activate makes the prepared root the signing one.
func activate(upd *corev1.Secret) error {
	cert, key := upd.Data[NextCACertKey], upd.Data[NextCAKeyKey]
	if len(cert) == 0 || len(key) == 0 {
		return fmt.Errorf("kubestore: rotation: phase %s but no %s and %s", PhasePrepared, NextCACertKey, NextCAKeyKey)
	}
	upd.Data[CACertKey], upd.Data[CAKeyKey] = cert, key
	delete(upd.Data, NextCACertKey)
	delete(upd.Data, NextCAKeyKey)
	return nil
}

// retire leaves only the active root in the bundle.
func retire(upd *corev1.Secret) error {
	certs, err := pemfile.ParseCertificates(upd.Data[CACertKey])
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %s: %w", CACertKey, err)
	}
	upd.Data[RootCertKey] = pemfile.EncodeCertificates(certs[:1])
	return nil
}

func annotationTime(sec *corev1.Secret, name string) (time.Time, error) {
	v := sec.Annotations[name]
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("kubestore: rotation: annotation %s=%q is not an RFC 3339 time", name, v)
	}
	return t, nil
}

// RotationStatus reports the roots of the bundle in the CA Secret last
// seen and the rotation phase, for the CA's metrics.
func (s *Store) RotationStatus() (*rotation.Status, error) {
	s.mu.Lock()
	sec := s.last
	s.mu.Unlock()
	if sec == nil {
		return nil, errors.New("kubestore: the CA Secret has not been read yet")
	}
	return SecretStatus(sec)
}

// SecretStatus reports the roots of the bundle in the CA Secret sec and
// the rotation phase its annotations record.
func SecretStatus(sec *corev1.Secret) (*rotation.Status, error) {
	where := "Secret " + sec.Namespace + "/" + sec.Name
	out := &rotation.Status{Mode: rotation.ModeKubernetes, Phase: rotation.PhaseSteady}
	var err error
	switch phase := sec.Annotations[RotationPhaseAnnotation]; phase {
	case "":
	case PhasePrepared:
		out.Phase = rotation.PhasePrepared
		out.ActivateAfter, err = annotationTime(sec, ActivateAfterAnnotation)
	case PhaseActivated:
		out.Phase = rotation.PhaseActivated
		out.RetireAfter, err = annotationTime(sec, RetireAfterAnnotation)
	default:
		err = fmt.Errorf("kubestore: %s: unknown phase %q in annotation %s", where, phase, RotationPhaseAnnotation)
	}
	if err != nil {
		return nil, err
	}
	parse := func(key string, required bool) ([]*x509.Certificate, error) {
		if len(bytes.TrimSpace(sec.Data[key])) == 0 && !required {
			return nil, nil
		}
		certs, err := pemfile.ParseCertificates(sec.Data[key])
		if err != nil {
			return nil, fmt.Errorf("kubestore: %s: %s: %w", where, key, err)
		}
		return certs, nil
	}
	bundle, err := parse(RootCertKey, true)
	if err != nil {
		return nil, err
	}
	certs, err := parse(CACertKey, true)
	if err != nil {
		return nil, err
	}
	chain, err := parse(CertChainKey, false)
	if err != nil {
		return nil, err
	}
	nexts, err := parse(NextCACertKey, false)
	if err != nil {
		return nil, err
	}
	// The active root is the top of the signing chain, or the root that
	// signed it.
	top := certs[0]
	if len(chain) > 0 {
		top = chain[len(chain)-1]
	}
	var active, next *x509.Certificate
	for _, r := range bundle {
		if r.Equal(top) || (!ca.IsSelfSigned(top) && top.CheckSignatureFrom(r) == nil) {
			active = r
			break
		}
	}
	if len(nexts) > 0 {
		next = nexts[0]
	}
	out.AddRoots(bundle, active, next)
	return out, nil
}
