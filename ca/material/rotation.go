package material

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/cacerts"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/kms"
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

// nextRootKeyName is NextRootKeyFile's name in the data directory's key
// store (see dirKeys).
const nextRootKeyName = "next-root-key"

// Backend keeps a root rotation in a data directory, for rotation.Engine:
// rotation.json, the trust bundle in root-cert.pem, a prepared
// self-signed root in next-root-cert.pem (its key in next-root-key.pem,
// or in the key store), prepared cacerts in next/. A running CA on the
// same directory picks every step up on its next reload.
//
// For a self-signed CA, Prepare generates the new root and its key, the
// key in the store of the active one; for a plugged-in CA, Prepare's from
// names a directory holding the new cacerts (ca-cert.pem, ca-key.pem,
// cert-chain.pem, root-cert.pem).
type Backend struct {
	// Dir is the CA's data directory.
	Dir string
	// TrustDomain names a new self-signed root.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a new self-signed root. Default: 10 years.
	RootTTL time.Duration
	// Keys holds a self-signed root's keys when they are outside the data
	// directory (no root-key.pem): Prepare creates the next root's key
	// there, never in software. Status works without it.
	Keys KeyStore

	// authority, if set, is the running Store's material: plugged-in
	// material, which is never rotated automatically, takes its active
	// root from it instead of opening its key and chain at every status
	// scrape and step check.
	authority func() *ca.Authority
}

// Rotation returns the rotation of the Store's root under policy p: the
// engine over the Store's data directory and key store.
func (s *Store) Rotation(p rotation.Policy) *rotation.Engine {
	b := &Backend{Dir: s.cfg.Dir, TrustDomain: s.cfg.TrustDomain, RootTTL: s.cfg.RootTTL, Keys: s.cfg.Keys, authority: s.Authority}
	return &rotation.Engine{Backend: b, Policy: p, Logger: s.cfg.Logger}
}

func (b *Backend) path(name string) string { return filepath.Join(b.Dir, name) }

func (b *Backend) mode() (rotation.Mode, error) {
	st := &Store{cfg: Config{Dir: b.Dir}}
	plugged, err := st.detect()
	if err != nil {
		return "", err
	}
	if plugged {
		return rotation.ModePluggedIn, nil
	}
	if _, err := os.Stat(b.path(RootCertFile)); err != nil {
		return "", fmt.Errorf("material: %s holds no CA material: %w", b.Dir, err)
	}
	return rotation.ModeSelfSigned, nil
}

// external reports whether a self-signed root's key is held outside the
// data directory.
func (b *Backend) external() bool {
	_, err := os.Stat(b.path(RootKeyFile))
	return errors.Is(err, fs.ErrNotExist)
}

// Load reads the data directory.
func (b *Backend) Load(ctx context.Context) (*rotation.Material, error) {
	mode, err := b.mode()
	if err != nil {
		return nil, err
	}
	m := &rotation.Material{Mode: mode}
	if m.State, err = rotation.ReadState(b.Dir); err != nil {
		return nil, err
	}
	if m.Bundle, err = pemfile.ReadCertificates(b.path(RootCertFile)); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	if mode == rotation.ModePluggedIn {
		m.Manual = errors.New("material: plugged-in cacerts are rotated by hand")
		a, err := b.pluggedIn(ctx)
		if err != nil {
			return nil, err
		}
		m.Active = a.Root()
		if m.State.Phase != rotation.PhaseSteady {
			if m.Next, err = readOptionalCerts(filepath.Join(b.path(NextDir), RootCertFile)); err != nil {
				return nil, err
			}
		}
		return m, nil
	}
	if m.State.Phase != rotation.PhaseSteady {
		if m.Next, err = readOptionalCerts(b.path(NextRootCertFile)); err != nil {
			return nil, err
		}
	}
	if m.Active, err = b.activeRoot(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
}

// pluggedIn returns the running Store's plugged-in material, or loads it
// from the directory when there is no Store (castellan ca rotate).
func (b *Backend) pluggedIn(ctx context.Context) (*ca.Authority, error) {
	if b.authority != nil {
		if a := b.authority(); a != nil {
			return a, nil
		}
	}
	st := &Store{cfg: Config{Dir: b.Dir, Logger: slog.New(slog.DiscardHandler)}, mode: rotation.ModePluggedIn}
	a, _, err := st.loadPluggedIn(ctx)
	return a, err
}

// readOptionalCerts reads the certificates at path; none if there is no
// such file.
func readOptionalCerts(path string) ([]*x509.Certificate, error) {
	certs, err := pemfile.ReadCertificates(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	return certs, nil
}

// activeRoot returns the self-signed root the CA signs under now: the one
// matching the active key, or when the key is outside the data directory
// and no key store is given, the one the rotation phase and the prepared
// root (next-root-cert.pem, kept until retirement) tell.
func (b *Backend) activeRoot(ctx context.Context, m *rotation.Material) (*x509.Certificate, error) {
	keys, name := b.Keys, m.State.Key
	if !b.external() {
		keys, name = dirKeys(b.Dir), ""
	}
	if keys != nil {
		key, err := openRootKey(ctx, keys, nil, name)
		if err != nil {
			return nil, err
		}
		if c := matchingRoot(m.Bundle, key); c != nil {
			return c, nil
		}
		return nil, fmt.Errorf("material: no root in %s matches the active key %s", b.path(RootCertFile), keyLabel(name))
	}
	var next *x509.Certificate
	if len(m.Next) > 0 {
		next = m.Next[0]
	} else if m.State.Phase != rotation.PhaseSteady {
		return nil, fmt.Errorf("material: phase %s, but %s is missing", m.State.Phase, b.path(NextRootCertFile))
	}
	var others []*x509.Certificate
	for _, c := range m.Bundle {
		if next == nil || !c.Equal(next) {
			others = append(others, c)
		}
	}
	switch {
	case m.State.Phase == rotation.PhaseActivated:
		return next, nil
	case len(others) == 1:
		return others[0], nil
	}
	return nil, fmt.Errorf("material: %s holds %d roots in phase %s; which one signs is known only from the key store (give --signer-key-uri)", b.path(RootCertFile), len(m.Bundle), m.State.Phase)
}

// Mint makes the next self-signed root, its key created in the store of
// the active key, or takes the next cacerts from the directory from.
func (b *Backend) Mint(ctx context.Context, m *rotation.Material, from string, now time.Time) (*rotation.Minted, error) {
	if m.Mode == rotation.ModePluggedIn {
		if from == "" {
			return nil, errors.New("material: a plugged-in CA needs the directory of its next cacerts")
		}
		return b.preparePluggedIn(ctx, from)
	}
	if from != "" {
		return nil, errors.New("material: a self-signed CA generates its next root; --from is for plugged-in CAs")
	}
	keys, name := b.Keys, "castellan-root-"+now.Format("20060102t150405z")
	if !b.external() {
		keys, name = dirKeys(b.Dir), nextRootKeyName
		// A leftover from an interrupted prepare is replaced.
		os.Remove(b.path(NextRootKeyFile))
	} else if keys == nil {
		return nil, errors.New("material: the root key is held outside the data directory (an HSM or KMS), and no key store is configured to create the next root's key in; give --signer-key-uri")
	}
	// A software key would defeat an HSM, so there is no fallback.
	key, err := keys.Create(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("material: cannot create the next root's key %q in the key store that holds the active one: %w", name, err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: b.TrustDomain, TTL: b.RootTTL, NotBefore: now.Add(-time.Minute)})
	if err != nil {
		return nil, fmt.Errorf("material: the next root, for key %q: %w", name, err)
	}
	if err := pemfile.WriteCertificates(b.path(NextRootCertFile), []*x509.Certificate{root}); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	return &rotation.Minted{Roots: []*x509.Certificate{root}, Key: name}, nil
}

func (b *Backend) preparePluggedIn(ctx context.Context, from string) (*rotation.Minted, error) {
	next := &Store{cfg: Config{Dir: from, Logger: slog.New(slog.DiscardHandler)}, mode: rotation.ModePluggedIn}
	if ok, err := next.detect(); err != nil || !ok {
		return nil, fmt.Errorf("material: %s is not a complete cacerts directory: %v", from, err)
	}
	a, _, err := next.loadPluggedIn(ctx)
	if err != nil {
		return nil, err
	}
	dir := b.path(NextDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	for _, f := range cacerts.Files() {
		if err := copyFile(filepath.Join(from, f), filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("material: %w", err)
		}
	}
	roots := []*x509.Certificate{a.Root()}
	for _, c := range a.Roots {
		if !c.Equal(a.Root()) {
			roots = append(roots, c)
		}
	}
	return &rotation.Minted{Roots: roots}, nil
}

// Save writes the outcome of a step to the data directory.
func (b *Backend) Save(_ context.Context, m *rotation.Material, c rotation.Change) error {
	inDir := m.Mode == rotation.ModeSelfSigned && !b.external()
	switch c.Step {
	case rotation.StepPrepare:
		if err := rotation.WriteState(b.Dir, c.State); err != nil {
			return err
		}
		return b.writeBundle(c.Bundle)
	case rotation.StepActivate:
		if m.Mode == rotation.ModeSelfSigned && !inDir && m.State.NextKey == "" {
			return fmt.Errorf("material: %s names no prepared key; prepare the rotation again", b.path(RotationFile))
		}
		if inDir {
			// next-root-key.pem becomes root-key.pem, the configured key.
			c.State.Key = ""
		}
		if err := rotation.WriteState(b.Dir, c.State); err != nil {
			return err
		}
		switch {
		case inDir:
			// One rename switches the signing key; root-cert.pem already
			// holds both roots.
			if err := os.Rename(b.path(NextRootKeyFile), b.path(RootKeyFile)); err != nil {
				return fmt.Errorf("material: %w", err)
			}
			os.Remove(b.path(NextRootCertFile))
		case m.Mode == rotation.ModeSelfSigned:
			// rotation.json, written above, names the new key; the prepared
			// root stays in next-root-cert.pem until retirement, for status.
		case m.Mode == rotation.ModePluggedIn:
			// The key goes first: until the certificate follows, the pair
			// does not match and a reload keeps the old material.
			for _, f := range []string{CAKeyFile, CertChainFile, CACertFile} {
				if err := copyFile(filepath.Join(b.path(NextDir), f), b.path(f)); err != nil {
					return fmt.Errorf("material: %w", err)
				}
			}
		}
		return nil
	case rotation.StepRetire:
		if err := b.writeBundle(c.Bundle); err != nil {
			return err
		}
		if err := rotation.WriteState(b.Dir, c.State); err != nil {
			return err
		}
		os.RemoveAll(b.path(NextDir))
		os.Remove(b.path(NextRootCertFile))
		return nil
	}
	return fmt.Errorf("material: unknown rotation step %q", c.Step)
}

func (b *Backend) writeBundle(certs []*x509.Certificate) error {
	if err := pemfile.WriteCertificates(b.path(RootCertFile), certs); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	return nil
}

// dirKeys is the key store of a self-signed root whose key is a file in
// the data directory dir: the configured key (name "") is root-key.pem,
// a key named n is n.pem. Keys are opened and created through kms, with
// its key-file policy (mode 0600, never overwritten), and never cached:
// an activation renames next-root-key.pem over root-key.pem.
type dirKeys string

func (d dirKeys) uri(name string) string {
	file := RootKeyFile
	if name != "" {
		file = name + ".pem"
	}
	p := filepath.Join(string(d), file)
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return (&url.URL{Scheme: "file", Path: p}).String()
}

// Open returns the key named name.
func (d dirKeys) Open(ctx context.Context, name string) (crypto.Signer, error) {
	k, err := kms.Open(ctx, d.uri(name), kms.Config{})
	if err != nil {
		return nil, err
	}
	return k.Signer, nil
}

// Create generates a new ECDSA P-256 key named name.
func (d dirKeys) Create(ctx context.Context, name string) (crypto.Signer, error) {
	k, err := kms.Create(ctx, d.uri(name), kms.ECDSAP256, kms.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	return k.Signer, nil
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
