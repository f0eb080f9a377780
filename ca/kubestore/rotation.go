package kubestore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// A self-signed root that the Store created is rotated by the leader with
// rotation.Engine (see Store.Rotation), each step one update of the
// Secret that every replica picks up:
//
//  1. prepare: a new root is stored under NextCACertKey, with its key under
//     NextCAKeyKey (or, when the root key is in a key store, the key is
//     created there and the state names it), and the new root joins
//     root-cert.pem. Replicas still sign with the old root.
//  2. activate, PropagationDelay later: the new root becomes ca-cert.pem
//     and signs. The old root stays in the bundle.
//  3. retire, once every SVID the old root signed has expired: root-cert.pem
//     holds only the new root.
//
// The state is an annotation on the Secret, so a new leader takes over a
// rotation where the old one left it; a resourceVersion conflict stops a
// stale leader.

// Keys and annotations of a rotation.
const (
	NextCACertKey = "next-ca-cert.pem"
	NextCAKeyKey  = "next-ca-key.pem"

	// RotationStateAnnotation holds the rotation.State, in JSON: the
	// record every step reads. The three annotations below mirror it for
	// people and tools.
	RotationStateAnnotation = "castellan.io/rotation"
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

// SecretBackend keeps a root rotation in the CA Secret, for
// rotation.Engine: each step is one update of the Secret, which every
// replica picks up. Prepare's from must be empty: the new root is
// generated.
type SecretBackend struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// Namespace and SecretName name the CA Secret. Required.
	Namespace, SecretName string
	// TrustDomain and RootTTL describe a root Prepare creates.
	TrustDomain spiffeid.TrustDomain
	RootTTL     time.Duration
	// Keys, when the root key is outside the Secret (the CA's
	// --signer-key-uri), is its key store: Prepare creates the next root's
	// key there. Required to prepare such a rotation.
	Keys rotation.KeyStore

	// signer is the configured root key when it is outside the Secret.
	signer crypto.Signer
	// written, if set, sees each Secret written.
	written func(*corev1.Secret)
	// leading, if set, says whether this replica may take automatic
	// steps; the others only report the status.
	leading func() bool
	// cached, if set, returns the Secret the Store's watch saw last (nil
	// for none), so that a status scrape or a replica's step check costs
	// no read of the API server. A stale copy is safe: a write from it
	// fails on its resourceVersion.
	cached func() *corev1.Secret
}

// errNotLeader is why a replica that does not hold the Lease takes no
// automatic rotation step.
var errNotLeader = errors.New("kubestore: this replica does not hold the Lease; the leader rotates the root")

// Rotation returns the root rotation of the CA Secret under policy p.
// Every replica reports its status; only the one holding the Lease takes
// the automatic steps (rotation.Engine.Step), and the Secret's
// resourceVersion guards against a stale leader.
func (s *Store) Rotation(p rotation.Policy) *rotation.Engine {
	b := &SecretBackend{Client: s.cfg.Client, Namespace: s.cfg.Namespace, SecretName: s.cfg.SecretName,
		TrustDomain: s.cfg.TrustDomain, RootTTL: s.cfg.RootTTL, Keys: s.cfg.Keys,
		signer: s.cfg.Signer, written: s.observe, leading: s.IsLeader, cached: s.lastSecret}
	return &rotation.Engine{Backend: b, Policy: p, Now: func() time.Time { return s.now() }, Logger: s.log}
}

// Load reads the Secret (see secret).
func (b *SecretBackend) Load(ctx context.Context) (*rotation.Material, error) {
	sec, err := b.secret(ctx)
	if err != nil {
		return nil, err
	}
	m, err := secretMaterial(sec)
	if err != nil {
		return nil, err
	}
	m.Manual = b.rotatable(sec)
	if m.Manual == nil && b.leading != nil && !b.leading() {
		m.Manual = errNotLeader
	}
	m.Raw = sec.DeepCopy()
	return m, nil
}

// secret returns the watch's copy of the Secret when there is one, and
// reads it otherwise.
func (b *SecretBackend) secret(ctx context.Context) (*corev1.Secret, error) {
	if b.cached != nil {
		if sec := b.cached(); sec != nil {
			return sec, nil
		}
	}
	sec, err := b.Client.CoreV1().Secrets(b.Namespace).Get(ctx, b.SecretName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubestore: read Secret %s/%s: %w", b.Namespace, b.SecretName, err)
	}
	return sec, nil
}

// rotatable refuses a Secret whose root this package does not rotate: only
// a self-signed root the Store created, with its key in the Secret or in
// a key store; plugged-in material is the operator's to replace.
func (b *SecretBackend) rotatable(sec *corev1.Secret) error {
	keyInSecret := len(bytes.TrimSpace(sec.Data[CAKeyKey])) != 0
	switch {
	case !keyInSecret && b.Keys == nil:
		return errors.New("kubestore: rotation: the root key is held outside the Secret, and no key store is configured to create the next root's key in; give --signer-key-uri")
	case keyInSecret && b.Keys != nil:
		return fmt.Errorf("kubestore: rotation: Secret %s/%s holds its root key, but a key store is configured (--signer-key-uri); the next key would not be where the CA looks for it", sec.Namespace, sec.Name)
	case sec.Labels[ManagedByLabel] != ManagedByValue:
		return fmt.Errorf("kubestore: rotation: Secret %s/%s was not created by castellan (label %s=%s); replace plugged-in material by hand", sec.Namespace, sec.Name, ManagedByLabel, ManagedByValue)
	case len(bytes.TrimSpace(sec.Data[CertChainKey])) != 0:
		return errors.New("kubestore: rotation: the Secret holds an intermediate, not a self-signed root")
	}
	certs, err := pemfile.ParseCertificates(sec.Data[CACertKey])
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %s: %w", CACertKey, err)
	}
	if !ca.IsSelfSigned(certs[0]) {
		return errors.New("kubestore: rotation: the Secret holds no self-signed root")
	}
	return nil
}

// Mint makes the next root: its key in the key store of the active one,
// or a software key kept in the Secret.
func (b *SecretBackend) Mint(ctx context.Context, m *rotation.Material, from string, now time.Time) (*rotation.Minted, error) {
	if from != "" {
		return nil, errors.New("kubestore: a root kept in a Secret is generated; --from is for plugged-in and upstream CAs")
	}
	if m.Manual != nil {
		return nil, m.Manual
	}
	upd := m.Raw.(*corev1.Secret)
	var (
		key  crypto.Signer
		name string
		err  error
	)
	if b.Keys != nil {
		// A software key would defeat an HSM: the next key goes in the
		// same store, and the Secret names it.
		name = "castellan-root-" + now.Format("20060102t150405z")
		if key, err = b.Keys.Create(ctx, name); err != nil {
			return nil, fmt.Errorf("kubestore: rotation: cannot create the next root's key %q in the key store that holds the active one: %w", name, err)
		}
	} else if key, err = kms.GenerateKey(kms.ECDSAP256); err != nil {
		return nil, fmt.Errorf("kubestore: rotation: %w", err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: b.TrustDomain, TTL: b.RootTTL, NotBefore: now.Add(-time.Minute)})
	if err != nil {
		return nil, fmt.Errorf("kubestore: rotation: %w", err)
	}
	upd.Data[NextCACertKey] = pemfile.EncodeCertificates([]*x509.Certificate{root})
	if b.Keys == nil {
		keyPEM, err := pemfile.EncodePrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("kubestore: rotation: %w", err)
		}
		upd.Data[NextCAKeyKey] = keyPEM
	}
	return &rotation.Minted{Roots: []*x509.Certificate{root}, Key: name}, nil
}

// Save writes the step's outcome in one update of the Secret, once it
// loads.
func (b *SecretBackend) Save(ctx context.Context, m *rotation.Material, c rotation.Change) error {
	upd := m.Raw.(*corev1.Secret)
	switch c.Step {
	case rotation.StepPrepare, rotation.StepRetire:
		upd.Data[RootCertKey] = pemfile.EncodeCertificates(c.Bundle)
	case rotation.StepActivate:
		cert, key := upd.Data[NextCACertKey], upd.Data[NextCAKeyKey]
		keyInSecret := m.State.NextKey == ""
		if len(cert) == 0 || (keyInSecret && len(key) == 0) {
			return fmt.Errorf("kubestore: rotation: phase %s but no %s and %s", PhasePrepared, NextCACertKey, NextCAKeyKey)
		}
		upd.Data[CACertKey] = cert
		if keyInSecret {
			upd.Data[CAKeyKey] = key
		} else {
			delete(upd.Data, CAKeyKey)
		}
		delete(upd.Data, NextCACertKey)
		delete(upd.Data, NextCAKeyKey)
	}
	if err := setState(upd, c.State); err != nil {
		return err
	}
	// The new content must load before it is written.
	if err := b.check(ctx, upd, c.State); err != nil {
		return fmt.Errorf("kubestore: rotation %s: the new material does not load: %w", c.Step, err)
	}
	written, err := b.Client.CoreV1().Secrets(b.Namespace).Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("kubestore: rotation %s: update Secret: %w", c.Step, err)
	}
	if b.written != nil {
		b.written(written)
	}
	return nil
}

// check loads the Secret's new content with the key that will sign. A
// key outside the Secret that is not at hand (a step taken by hand
// without the key store) is checked by every replica as it loads.
func (b *SecretBackend) check(ctx context.Context, upd *corev1.Secret, st rotation.State) error {
	signer := b.signer
	if b.Keys != nil {
		k, err := b.Keys.Open(ctx, st.Key)
		if err != nil {
			return err
		}
		signer = k
	}
	if signer == nil && len(bytes.TrimSpace(upd.Data[CAKeyKey])) == 0 && st.Key != "" {
		return nil
	}
	_, err := decodeAuthority(upd.Data, signer)
	return err
}

// setState records st on sec: the state annotation, and its mirrors.
func setState(sec *corev1.Secret, st rotation.State) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("kubestore: rotation: %w", err)
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	a := sec.Annotations
	a[RotationStateAnnotation] = string(raw)
	delete(a, RotationPhaseAnnotation)
	delete(a, ActivateAfterAnnotation)
	delete(a, RetireAfterAnnotation)
	switch st.Phase {
	case rotation.PhasePrepared:
		a[RotationPhaseAnnotation] = PhasePrepared
		a[ActivateAfterAnnotation] = st.ActivateAfter.UTC().Format(time.RFC3339)
	case rotation.PhaseActivated:
		a[RotationPhaseAnnotation] = PhaseActivated
		a[RetireAfterAnnotation] = st.RetireAfter.UTC().Format(time.RFC3339)
	}
	return nil
}

// secretState reads the rotation state recorded on sec: the state
// annotation, or for a Secret a release before it rotated, the phase
// annotations alone.
func secretState(sec *corev1.Secret) (rotation.State, error) {
	where := "Secret " + sec.Namespace + "/" + sec.Name
	if raw, ok := sec.Annotations[RotationStateAnnotation]; ok {
		return rotation.ParseState(where+" annotation "+RotationStateAnnotation, []byte(raw))
	}
	st := rotation.State{Phase: rotation.PhaseSteady}
	var err error
	switch phase := sec.Annotations[RotationPhaseAnnotation]; phase {
	case "":
	case PhasePrepared:
		st.Phase = rotation.PhasePrepared
		st.ActivateAfter, err = annotationTime(sec, ActivateAfterAnnotation)
	case PhaseActivated:
		st.Phase = rotation.PhaseActivated
		st.RetireAfter, err = annotationTime(sec, RetireAfterAnnotation)
	default:
		err = fmt.Errorf("kubestore: %s: unknown phase %q in annotation %s", where, phase, RotationPhaseAnnotation)
	}
	return st, err
}

func annotationTime(sec *corev1.Secret, name string) (time.Time, error) {
	v := sec.Annotations[name]
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("kubestore: rotation: annotation %s=%q is not an RFC 3339 time", name, v)
	}
	return t, nil
}

// secretMaterial reads the rotation state and roots of the CA Secret sec.
func secretMaterial(sec *corev1.Secret) (*rotation.Material, error) {
	where := "Secret " + sec.Namespace + "/" + sec.Name
	st, err := secretState(sec)
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
	m := &rotation.Material{Mode: rotation.ModeKubernetes, State: st, Bundle: bundle}
	if m.Next, err = parse(NextCACertKey, false); err != nil {
		return nil, err
	}
	// The active root is the top of the signing chain, or the root that
	// signed it.
	top := certs[0]
	if len(chain) > 0 {
		top = chain[len(chain)-1]
	}
	for _, r := range bundle {
		if r.Equal(top) || (!ca.IsSelfSigned(top) && top.CheckSignatureFrom(r) == nil) {
			m.Active = r
			break
		}
	}
	return m, nil
}
