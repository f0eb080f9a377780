package kubestore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/castellan-mesh/castellan/ca"
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

// Rotation phases, the values of RotationPhaseAnnotation.
const (
	PhasePrepared  = "prepared"
	PhaseActivated = "activated"
)

// Defaults of the rotation settings in Config.
const (
	DefaultPropagationDelay = time.Hour
	DefaultMaxLeafTTL       = 24 * time.Hour
	DefaultRetireMargin     = 10 * time.Minute
	DefaultRotationInterval = time.Minute
)

// rotate runs rotation steps every RotationInterval until ctx ends. It is
// a leader job.
func (s *Store) rotate(ctx context.Context) error {
	t := time.NewTicker(s.cfg.RotationInterval)
	defer t.Stop()
	for {
		did, err := s.RotationStep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.metrics.rotations.WithLabelValues("error").Inc()
			s.log.Error("root rotation step failed; will retry", "error", err)
		case did != "":
			s.metrics.rotations.WithLabelValues(did).Inc()
			s.log.Info("root rotation", "step", did)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
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
		upd.Annotations[RetireAfterAnnotation] = now.Add(s.cfg.MaxLeafTTL + s.cfg.RetireMargin).UTC().Format(time.RFC3339)
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
	upd.Annotations[ActivateAfterAnnotation] = now.Add(s.cfg.PropagationDelay).UTC().Format(time.RFC3339)
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
