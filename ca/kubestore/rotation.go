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
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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
	did, written, err := s.stepper().step(ctx, "", false, s.now(), s.cfg.RotateBefore)
	if written != nil {
		s.observe(written)
	}
	return did, err
}

func (s *Store) stepper() *secretStepper {
	return &secretStepper{client: s.cfg.Client, namespace: s.cfg.Namespace, name: s.cfg.SecretName,
		signer: s.cfg.Signer, td: s.cfg.TrustDomain, rootTTL: s.cfg.RootTTL, policy: s.policy()}
}

// secretStepper takes rotation steps on a CA Secret, each one update.
type secretStepper struct {
	client          kubernetes.Interface
	namespace, name string
	signer          crypto.Signer
	td              spiffeid.TrustDomain
	rootTTL         time.Duration
	policy          rotation.Policy
}

// step takes step want at now, or with want "" the step that is due (a
// prepare when the root has less than rotateBefore left). force skips
// the waits of the policy. It returns the step taken and the Secret
// written.
func (r *secretStepper) step(ctx context.Context, want string, force bool, now time.Time, rotateBefore time.Duration) (string, *corev1.Secret, error) {
	secrets := r.client.CoreV1().Secrets(r.namespace)
	sec, err := secrets.Get(ctx, r.name, metav1.GetOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("kubestore: rotation: read Secret: %w", err)
	}
	st, err := SecretStatus(sec)
	if err != nil {
		return "", nil, fmt.Errorf("kubestore: rotation: %w", err)
	}
	did := want
	if want == "" {
		if did = rotation.Due(st, now, rotateBefore); did == "" || (did == "prepare" && r.rotatable(sec) != nil) {
			return "", nil, nil
		}
	}
	upd := sec.DeepCopy()
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	state := rotation.State{Phase: st.Phase}
	switch did {
	case "prepare":
		if err := state.Require(rotation.PhaseSteady); err != nil {
			return "", nil, err
		}
		if err := r.prepare(upd, now); err != nil {
			return "", nil, err
		}
	case "activate":
		if err := state.Require(rotation.PhasePrepared); err != nil {
			return "", nil, err
		}
		if now.Before(st.ActivateAfter) && !force {
			return "", nil, fmt.Errorf("kubestore: rotation: the new root may sign from %s, once it has reached every peer; wait, or force", st.ActivateAfter.Format(time.RFC3339))
		}
		if err := activate(upd); err != nil {
			return "", nil, err
		}
		upd.Annotations[RotationPhaseAnnotation] = PhaseActivated
		upd.Annotations[RetireAfterAnnotation] = r.policy.RetireAfter(now).UTC().Format(time.RFC3339)
		delete(upd.Annotations, ActivateAfterAnnotation)
	case "retire":
		if err := state.Require(rotation.PhaseActivated); err != nil {
			return "", nil, err
		}
		if err := r.policy.CheckRetire(rotation.State{RetireAfter: st.RetireAfter}, now, force); err != nil {
			return "", nil, err
		}
		if err := retire(upd); err != nil {
			return "", nil, err
		}
		delete(upd.Annotations, RotationPhaseAnnotation)
		delete(upd.Annotations, RetireAfterAnnotation)
	default:
		return "", nil, fmt.Errorf("kubestore: rotation: unknown step %q", did)
	}
	// The new content must load before it is written.
	if _, err := decodeAuthority(upd.Data, r.signer); err != nil {
		return "", nil, fmt.Errorf("kubestore: rotation %s: the new material does not load: %w", did, err)
	}
	written, err := secrets.Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("kubestore: rotation %s: update Secret: %w", did, err)
	}
	return did, written, nil
}

// rotatable refuses a Secret whose root this package does not rotate: only
// a self-signed root the Store created, with its key in the Secret;
// plugged-in material is the operator's to replace.
func (r *secretStepper) rotatable(sec *corev1.Secret) error {
	switch {
	case r.signer != nil:
		return errors.New("kubestore: rotation: the root key is held outside the Secret (--signer-key-uri); Kubernetes mode does not rotate it")
	case sec.Labels[ManagedByLabel] != ManagedByValue:
		return fmt.Errorf("kubestore: rotation: Secret %s/%s was not created by castellan (label %s=%s); replace plugged-in material by hand", sec.Namespace, sec.Name, ManagedByLabel, ManagedByValue)
	}
	a, err := decodeAuthority(sec.Data, nil)
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %w", err)
	}
	if len(a.Chain) != 0 || !ca.IsSelfSigned(a.Cert) {
		return errors.New("kubestore: rotation: the Secret holds no self-signed root")
	}
	return nil
}

// prepare adds a new root and its key to upd.
func (r *secretStepper) prepare(upd *corev1.Secret, now time.Time) error {
	if err := r.rotatable(upd); err != nil {
		return err
	}
	a, err := decodeAuthority(upd.Data, nil)
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("kubestore: rotation: generate root key: %w", err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: r.td, TTL: r.rootTTL, NotBefore: now.Add(-time.Minute)})
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %w", err)
	}
	keyPEM, err := pemfile.EncodePrivateKey(crypto.Signer(key))
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %w", err)
	}
	upd.Data[NextCACertKey] = pemfile.EncodeCertificates([]*x509.Certificate{root})
	upd.Data[NextCAKeyKey] = keyPEM
	upd.Data[RootCertKey] = pemfile.EncodeCertificates(append(a.Roots, root))
	upd.Annotations[RotationPhaseAnnotation] = PhasePrepared
	upd.Annotations[ActivateAfterAnnotation] = r.policy.ActivateAfter(now).UTC().Format(time.RFC3339)
	return nil
}

// Rotator takes the root rotation steps of a CA Secret by hand ("castellan
// ca rotate --material=kubernetes"): the same updates the leader makes
// when they are due, which every replica picks up.
type Rotator struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// Namespace and SecretName name the CA Secret. Required.
	Namespace, SecretName string
	// TrustDomain and RootTTL describe a root Prepare creates.
	TrustDomain spiffeid.TrustDomain
	RootTTL     time.Duration
	// Policy holds the waits between the phases.
	Policy rotation.Policy
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
}

func (r *Rotator) step(ctx context.Context, step string, force bool) error {
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	s := &secretStepper{client: r.Client, namespace: r.Namespace, name: r.SecretName, td: r.TrustDomain, rootTTL: r.RootTTL, policy: r.Policy}
	_, _, err := s.step(ctx, step, force, now, 0)
	return err
}

// Prepare adds a new root, with its key, to the Secret's trust bundle.
// from must be empty: the new root is generated.
func (r *Rotator) Prepare(ctx context.Context, from string) error {
	if from != "" {
		return errors.New("kubestore: a root kept in a Secret is generated; --from is for plugged-in and upstream CAs")
	}
	return r.step(ctx, "prepare", false)
}

// Activate makes the prepared root sign.
func (r *Rotator) Activate(ctx context.Context, force bool) error {
	return r.step(ctx, "activate", force)
}

// Retire drops the old root from the trust bundle.
func (r *Rotator) Retire(ctx context.Context, force bool) error {
	return r.step(ctx, "retire", force)
}

// Status reports the Secret's roots and rotation phase.
func (r *Rotator) Status(ctx context.Context) (*rotation.Status, error) {
	sec, err := r.Client.CoreV1().Secrets(r.Namespace).Get(ctx, r.SecretName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubestore: read Secret %s/%s: %w", r.Namespace, r.SecretName, err)
	}
	return SecretStatus(sec)
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
	bundle, err := parse(RootCertKey, false)
	if err != nil {
		return nil, err
	}
	certs, err := parse(CACertKey, true)
	if err != nil {
		return nil, err
	}
	if len(bundle) == 0 {
		// As decodeAuthority: a self-signed ca-cert.pem is its own bundle.
		bundle = certs[:1]
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
