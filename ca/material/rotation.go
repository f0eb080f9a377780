package material

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Files a rotation adds to the data directory.
const (
	// RotationFile records the phase of a rotation in progress.
	RotationFile = rotation.File
	// NextRootCertFile and NextRootKeyFile hold a prepared self-signed root.
	NextRootCertFile = "next-root-cert.pem"
	NextRootKeyFile  = "next-root-key.pem"
	// NextDir holds the prepared cacerts of a plugged-in rotation.
	NextDir = "next"
)

// Rotator prepares, activates and retires roots in a data directory. A
// running CA on the same directory picks every step up on its next reload.
type Rotator struct {
	// Dir is the CA's data directory.
	Dir string
	// TrustDomain names a new self-signed root.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a new self-signed root. Default: 10 years.
	RootTTL time.Duration
	// Policy holds the waits between the phases.
	Policy rotation.Policy
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
	// Keys holds a self-signed root's keys when they are outside the data
	// directory (no root-key.pem): Prepare creates the next root's key
	// there, never in software. Status works without it.
	Keys KeyStore
}

func (r *Rotator) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Rotator) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Rotator) path(name string) string { return filepath.Join(r.Dir, name) }

func (r *Rotator) mode() (Mode, error) {
	st := &Store{cfg: Config{Dir: r.Dir}}
	plugged, err := st.detect()
	if err != nil {
		return "", err
	}
	if plugged {
		return ModePluggedIn, nil
	}
	if _, err := os.Stat(r.path(RootCertFile)); err != nil {
		return "", fmt.Errorf("material: %s holds no CA material: %w", r.Dir, err)
	}
	return ModeSelfSigned, nil
}

// Status reports the roots in the bundle and the rotation phase.
func (r *Rotator) Status(ctx context.Context) (*rotation.Status, error) {
	mode, err := r.mode()
	if err != nil {
		return nil, err
	}
	st, err := rotation.ReadState(r.Dir)
	if err != nil {
		return nil, err
	}
	bundle, err := pemfile.ReadCertificates(r.path(RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	active, err := r.activeRoot(ctx, mode, bundle, st)
	if err != nil {
		return nil, err
	}
	out := r.Policy.Status(mode, st)
	out.AddRoots(bundle, active, nil)
	return out, nil
}

// external reports whether a self-signed root's key is held outside the
// data directory.
func (r *Rotator) external() bool {
	_, err := os.Stat(r.path(RootKeyFile))
	return errors.Is(err, fs.ErrNotExist)
}

// activeRoot returns the root the CA signs under now.
func (r *Rotator) activeRoot(ctx context.Context, mode Mode, bundle []*x509.Certificate, st rotation.State) (*x509.Certificate, error) {
	if mode == ModePluggedIn {
		st := &Store{cfg: Config{Dir: r.Dir, Logger: slog.New(slog.DiscardHandler)}, mode: ModePluggedIn}
		a, _, err := st.loadPluggedIn()
		if err != nil {
			return nil, err
		}
		return a.Root(), nil
	}
	if r.external() {
		return r.activeExternalRoot(ctx, bundle, st)
	}
	key, err := pemfile.ReadPrivateKey(r.path(RootKeyFile))
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	for _, c := range bundle {
		if publicKeyEqual(key.Public(), c.PublicKey) {
			return c, nil
		}
	}
	return nil, fmt.Errorf("material: no root in %s matches %s", r.path(RootCertFile), r.path(RootKeyFile))
}

// activeExternalRoot returns the root the CA signs under now when its key
// is held outside the data directory: the one matching the key in the key
// store, or without the key store, the one the rotation phase and the
// prepared root (next-root-cert.pem, kept until retirement) tell.
func (r *Rotator) activeExternalRoot(ctx context.Context, bundle []*x509.Certificate, st rotation.State) (*x509.Certificate, error) {
	if r.Keys != nil {
		key, err := openRootKey(ctx, r.Keys, nil, st.Key)
		if err != nil {
			return nil, err
		}
		for _, c := range bundle {
			if publicKeyEqual(key.Public(), c.PublicKey) {
				return c, nil
			}
		}
		return nil, fmt.Errorf("material: no root in %s matches the active key %s in the key store", r.path(RootCertFile), keyLabel(st.Key))
	}
	var next *x509.Certificate
	if st.Phase != rotation.PhaseSteady {
		certs, err := pemfile.ReadCertificates(r.path(NextRootCertFile))
		if err != nil {
			return nil, fmt.Errorf("material: phase %s: %w", st.Phase, err)
		}
		next = certs[0]
	}
	var others []*x509.Certificate
	for _, c := range bundle {
		if next == nil || !c.Equal(next) {
			others = append(others, c)
		}
	}
	switch {
	case st.Phase == rotation.PhaseActivated:
		return next, nil
	case len(others) == 1:
		return others[0], nil
	}
	return nil, fmt.Errorf("material: %s holds %d roots in phase %s; which one signs is known only from the key store (give --signer-key-uri)", r.path(RootCertFile), len(bundle), st.Phase)
}

// begin reads the directory's mode and rotation state for a step that
// needs phase want.
func (r *Rotator) begin(ctx context.Context, want rotation.Phase) (Mode, rotation.State, error) {
	if err := ctx.Err(); err != nil {
		return "", rotation.State{}, err
	}
	mode, err := r.mode()
	if err != nil {
		return "", rotation.State{}, err
	}
	st, err := rotation.ReadState(r.Dir)
	if err != nil {
		return "", rotation.State{}, err
	}
	if err := st.Require(want); err != nil {
		return "", rotation.State{}, err
	}
	return mode, st, nil
}

// Prepare adds a new root to the trust bundle. Nothing is signed with it
// until Activate. For a self-signed CA the new root and its key are
// generated; for a plugged-in CA, from names a directory holding the new
// cacerts (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).
func (r *Rotator) Prepare(ctx context.Context, from string) error {
	mode, cur, err := r.begin(ctx, rotation.PhaseSteady)
	if err != nil {
		return err
	}
	bundle, err := pemfile.ReadCertificates(r.path(RootCertFile))
	if err != nil {
		return fmt.Errorf("material: %w", err)
	}
	next := rotation.State{Phase: rotation.PhasePrepared, PreparedAt: r.now().UTC(), Key: cur.Key}
	var newRoots []*x509.Certificate
	switch mode {
	case ModeSelfSigned:
		if from != "" {
			return errors.New("material: a self-signed CA generates its next root; --from is for plugged-in CAs")
		}
		var root *x509.Certificate
		if r.external() {
			root, next.NextKey, err = r.prepareExternal(ctx)
		} else {
			root, err = r.prepareSelfSigned(ctx)
		}
		if err != nil {
			return err
		}
		newRoots = []*x509.Certificate{root}
	case ModePluggedIn:
		if from == "" {
			return errors.New("material: a plugged-in CA needs the directory of its next cacerts")
		}
		if newRoots, err = r.preparePluggedIn(from); err != nil {
			return err
		}
	}
	if err := rotation.WriteState(r.Dir, next); err != nil {
		return err
	}
	if err := pemfile.WriteCertificates(r.path(RootCertFile), union(bundle, newRoots)); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	r.log().Info("prepared a new root; it is in the trust bundle but does not sign yet", "dir", r.Dir, "subject", newRoots[0].Subject.String(), "serial", fmt.Sprintf("%x", newRoots[0].SerialNumber), "activate_after", r.Policy.ActivateAfter(r.now()))
	return nil
}

func (r *Rotator) prepareSelfSigned(ctx context.Context) (*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A leftover from an interrupted prepare is replaced.
	os.Remove(r.path(NextRootKeyFile))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: r.TrustDomain, TTL: r.RootTTL, NotBefore: r.now().Add(-time.Minute)})
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	if err := pemfile.WritePrivateKey(r.path(NextRootKeyFile), key); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	if err := pemfile.WriteCertificates(r.path(NextRootCertFile), []*x509.Certificate{root}); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	return root, nil
}

// prepareExternal creates the next root's key in the key store that holds
// the active one, and the next root for it. A software key would defeat
// an HSM, so there is no fallback.
func (r *Rotator) prepareExternal(ctx context.Context) (*x509.Certificate, string, error) {
	if r.Keys == nil {
		return nil, "", errors.New("material: the root key is held outside the data directory (an HSM or KMS), and no key store is configured to create the next root's key in; give --signer-key-uri")
	}
	name := "castellan-root-" + r.now().UTC().Format("20060102t150405z")
	key, err := r.Keys.Create(ctx, name)
	if err != nil {
		return nil, "", fmt.Errorf("material: cannot create the next root's key %q in the key store that holds the active one: %w", name, err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: r.TrustDomain, TTL: r.RootTTL, NotBefore: r.now().Add(-time.Minute)})
	if err != nil {
		return nil, "", fmt.Errorf("material: the next root, for key %q: %w", name, err)
	}
	if err := pemfile.WriteCertificates(r.path(NextRootCertFile), []*x509.Certificate{root}); err != nil {
		return nil, "", fmt.Errorf("material: %w", err)
	}
	return root, name, nil
}

func (r *Rotator) preparePluggedIn(from string) ([]*x509.Certificate, error) {
	next := &Store{cfg: Config{Dir: from, Logger: slog.New(slog.DiscardHandler)}, mode: ModePluggedIn}
	if ok, err := next.detect(); err != nil || !ok {
		return nil, fmt.Errorf("material: %s is not a complete cacerts directory: %v", from, err)
	}
	a, _, err := next.loadPluggedIn()
	if err != nil {
		return nil, err
	}
	dir := r.path(NextDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	for _, f := range []string{CACertFile, CAKeyFile, CertChainFile, RootCertFile} {
		if err := copyFile(filepath.Join(from, f), filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("material: %w", err)
		}
	}
	return a.Roots, nil
}

// Activate makes the prepared root sign. It refuses before the
// propagation delay has passed, unless force is set.
func (r *Rotator) Activate(ctx context.Context, force bool) error {
	mode, st, err := r.begin(ctx, rotation.PhasePrepared)
	if err != nil {
		return err
	}
	now := r.now().UTC()
	if err := r.Policy.CheckActivate(st, now, force); err != nil {
		return err
	}
	external := mode == ModeSelfSigned && r.external()
	if external && st.NextKey == "" {
		return fmt.Errorf("material: %s names no prepared key; prepare the rotation again", r.path(RotationFile))
	}
	next := st.Activated(now, r.Policy)
	if err := rotation.WriteState(r.Dir, next); err != nil {
		return err
	}
	switch {
	case external:
		// rotation.json, written above, names the new key; the prepared
		// root stays in next-root-cert.pem until retirement, for status.
	case mode == ModeSelfSigned:
		// One rename switches the signing key; root-cert.pem already holds
		// both roots.
		if err := os.Rename(r.path(NextRootKeyFile), r.path(RootKeyFile)); err != nil {
			return fmt.Errorf("material: %w", err)
		}
		os.Remove(r.path(NextRootCertFile))
	case mode == ModePluggedIn:
		// The key goes first: until the certificate follows, the pair does
		// not match and a reload keeps the old material.
		for _, f := range []string{CAKeyFile, CertChainFile, CACertFile} {
			if err := copyFile(filepath.Join(r.path(NextDir), f), r.path(f)); err != nil {
				return fmt.Errorf("material: %w", err)
			}
		}
	}
	r.log().Info("activated the new root; the old one stays in the bundle until its SVIDs expire", "dir", r.Dir, "retire_after", next.RetireAfter)
	return nil
}

// Retire drops every root but the active one from the trust bundle. It
// refuses while an SVID signed under the old root may still be valid,
// unless force is set.
func (r *Rotator) Retire(ctx context.Context, force bool) error {
	mode, st, err := r.begin(ctx, rotation.PhaseActivated)
	if err != nil {
		return err
	}
	if err := r.Policy.CheckRetire(st, r.now(), force); err != nil {
		return err
	}
	bundle, err := pemfile.ReadCertificates(r.path(RootCertFile))
	if err != nil {
		return fmt.Errorf("material: %w", err)
	}
	keep := []*x509.Certificate{}
	if mode == ModePluggedIn {
		if keep, err = pemfile.ReadCertificates(filepath.Join(r.path(NextDir), RootCertFile)); err != nil {
			return fmt.Errorf("material: %w", err)
		}
	} else {
		active, err := r.activeRoot(ctx, mode, bundle, st)
		if err != nil {
			return err
		}
		keep = append(keep, active)
	}
	if err := pemfile.WriteCertificates(r.path(RootCertFile), keep); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	if err := rotation.WriteState(r.Dir, rotation.State{Phase: rotation.PhaseSteady, Key: st.Key}); err != nil {
		return err
	}
	os.RemoveAll(r.path(NextDir))
	os.Remove(r.path(NextRootCertFile))
	r.log().Info("retired the old root; the trust bundle holds only the active root", "dir", r.Dir, "roots", len(keep))
	return nil
}

// Step takes one automatic rotation step for a self-signed CA (see
// rotation.Due) and reports what it did ("" for nothing).
func (r *Rotator) Step(ctx context.Context, rotateBefore time.Duration) (string, error) {
	st, err := r.Status(ctx)
	if err != nil || st.Mode != ModeSelfSigned {
		return "", err
	}
	switch did := rotation.Due(st, r.now(), rotateBefore); did {
	case "prepare":
		return did, r.Prepare(ctx, "")
	case "activate":
		return did, r.Activate(ctx, false)
	case "retire":
		return did, r.Retire(ctx, false)
	}
	return "", nil
}

// Run calls Step every interval until ctx ends (see rotation.Run).
func (r *Rotator) Run(ctx context.Context, interval, rotateBefore time.Duration, observe func(step string)) error {
	step := func(ctx context.Context) (string, error) { return r.Step(ctx, rotateBefore) }
	return rotation.Run(ctx, interval, step, r.log(), observe)
}

// union returns a followed by the certificates of b not in a.
func union(a, b []*x509.Certificate) []*x509.Certificate {
	out := append([]*x509.Certificate(nil), a...)
	for _, c := range b {
		dup := false
		for _, o := range out {
			dup = dup || o.Equal(c)
		}
		if !dup {
			out = append(out, c)
		}
	}
	return out
}

// copyFile copies src to dst atomically; a CA key stays 0600.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	perm := os.FileMode(0o644)
	if filepath.Base(dst) == CAKeyFile {
		perm = 0o600
	}
	return pemfile.WriteFileAtomic(dst, b, perm)
}
