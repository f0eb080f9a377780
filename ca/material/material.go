// Package material loads and keeps the CA's signing material from its data
// directory. Two layouts are recognised:
//
//   - Plugged-in (Istio's cacerts): ca-cert.pem, ca-key.pem, cert-chain.pem
//     and root-cert.pem. The CA signs with ca-cert.pem as an intermediate.
//     The files are watched, and a valid change is taken without a restart.
//   - Self-signed (the embedded default): root-cert.pem and root-key.pem,
//     created on first start and reused on every start after.
//
// Every key file (root-key.pem, next-root-key.pem, ca-key.pem) is created
// and opened through kms, with its one key-file policy: a key is created
// with mode 0600 and never overwritten, and a key file that its group or
// others may read is refused, with an error that says to chmod 600 it.
//
// Nothing is ever regenerated silently: a data directory that holds part of
// a layout is an error that names what is missing.
package material

import (
	"cmp"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/internal/cacerts"
	"github.com/castellan-mesh/castellan/internal/filewatch"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names in the data directory: Istio's cacerts layout (package
// cacerts), or a self-signed root.
const (
	CACertFile    = cacerts.CACertFile
	CAKeyFile     = cacerts.CAKeyFile
	CertChainFile = cacerts.CertChainFile
	RootCertFile  = cacerts.RootCertFile
	RootKeyFile   = "root-key.pem"
)

// Config configures a Store.
type Config struct {
	// Dir is the data directory. It is created (0700) if missing.
	Dir string
	// TrustDomain names a self-signed root. Required.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a new self-signed root. Default: 10 years.
	RootTTL time.Duration
	// ReloadInterval is how often plugged-in files are checked for change.
	// Default: 5s.
	ReloadInterval time.Duration
	// Logger receives reload events. Default: slog.Default().
	Logger *slog.Logger
	// Signer, if set, is the self-signed root's key, kept elsewhere (an
	// HSM, a KMS). No key file is written or read; on restart the root in
	// root-cert.pem must match it. A CA with a Signer and no Keys cannot
	// rotate its root.
	Signer crypto.Signer
	// Keys, if set, holds the self-signed root's keys outside the data
	// directory: the configured key (name "") and the keys of the roots
	// that rotations created, by the name rotation.json records. It
	// replaces Signer.
	Keys KeyStore
}

// KeyStore holds a self-signed root's keys outside the data directory (an
// HSM, Vault Transit), so that a rotation creates the next root's key in
// the same store; kms.Ring implements it.
type KeyStore = rotation.KeyStore

// Store holds the current Authority. It implements ca.Notifier.
type Store struct {
	cfg     Config
	mode    rotation.Mode
	cur     atomic.Pointer[ca.Authority]
	changed broadcast.Signal

	files   *filewatch.Watcher
	lastErr atomic.Pointer[error] // nil after a successful load
}

// Open loads the material in cfg.Dir, creating a self-signed root if the
// directory holds none.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("material: no data directory")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("material: no trust domain")
	}
	cfg.ReloadInterval = cmp.Or(cfg.ReloadInterval, 5*time.Second)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("material: could not create data directory: %w", err)
	}
	s := &Store{cfg: cfg}
	var err error
	// A change to any of the files reloads them all.
	s.files, err = filewatch.New(filewatch.Config{Path: cfg.Dir, Interval: cfg.ReloadInterval, Read: s.hashFiles, Load: s.load, Report: s.report})
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	plugged, err := s.detect()
	if err != nil {
		return nil, err
	}
	var a *ca.Authority
	var h []byte
	if plugged {
		// The digest is taken before loading: a change meanwhile loads again.
		s.mode = rotation.ModePluggedIn
		a, h, err = s.loadPluggedIn(ctx)
	} else {
		s.mode = rotation.ModeSelfSigned
		if a, err = s.loadOrCreateRoot(ctx); err == nil {
			h, _ = s.hashFiles()
		}
	}
	if err != nil {
		return nil, err
	}
	s.cur.Store(a)
	if h != nil {
		s.files.Seed(h)
	}
	return s, nil
}

// Authority returns the Authority to sign with now.
func (s *Store) Authority() *ca.Authority { return s.cur.Load() }

// Changed returns a channel closed when a reload takes a new Authority.
func (s *Store) Changed() <-chan struct{} { return s.changed.C() }

// Mode reports which layout the Store loaded.
func (s *Store) Mode() rotation.Mode { return s.mode }

// LastReloadError returns the error of the latest failed reload, or nil
// once a reload has succeeded since.
func (s *Store) LastReloadError() error {
	if err := s.lastErr.Load(); err != nil {
		return *err
	}
	return nil
}

// Run watches the files and reloads them on change until ctx ends. A
// change that does not load (a missing file, a key that does not match, a
// broken chain) is logged and skipped; the current Authority stays.
func (s *Store) Run(ctx context.Context) error { return s.files.Run(ctx) }

// Reload checks the files once and takes them if they changed and are
// valid. It reports whether a new Authority was taken. In plugged-in mode
// the four cacerts files are watched; in self-signed mode root-cert.pem
// (the trust bundle, which may hold several roots during a rotation) and
// root-key.pem (the key of the active root).
func (s *Store) Reload() bool { return s.files.Check() }

// load takes the files as they are now; the digest Reload compared is
// not needed (files that change meanwhile differ from it on the next
// check, and load again).
func (s *Store) load([]byte) error {
	var a *ca.Authority
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), rotation.KeyOpTimeout)
	defer cancel()
	if s.mode == rotation.ModePluggedIn {
		a, _, err = s.loadPluggedIn(ctx)
	} else {
		a, err = s.loadRoot(ctx)
	}
	if err != nil {
		return err
	}
	s.lastErr.Store(nil)
	s.cur.Store(a)
	s.cfg.Logger.Info("reloaded CA material", "mode", string(s.mode), "dir", s.cfg.Dir, "subject", a.Cert.Subject.String(), "not_after", a.Cert.NotAfter, "bundle_roots", len(a.Roots))
	s.changed.Notify()
	return nil
}

// report logs each distinct reload error once and keeps it for
// LastReloadError.
func (s *Store) report(err error) {
	s.lastErr.Store(&err)
	s.cfg.Logger.Error("CA files changed but do not load; still signing with the previous material", "dir", s.cfg.Dir, "error", err)
}

func (s *Store) path(name string) string { return filepath.Join(s.cfg.Dir, name) }

// detect reports whether the directory holds the plugged-in layout, and
// fails on a partial one.
func (s *Store) detect() (bool, error) {
	var present, missing []string
	for _, f := range cacerts.Files() {
		if _, err := os.Stat(s.path(f)); err == nil {
			present = append(present, f)
		} else if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f)
		} else {
			return false, fmt.Errorf("material: %w", err)
		}
	}
	hasCA := slices.Contains(present, CACertFile) || slices.Contains(present, CAKeyFile)
	switch {
	case !hasCA:
		return false, nil
	case len(missing) == 0:
		return true, nil
	}
	return false, fmt.Errorf("material: %s holds a partial plugged-in CA layout: missing %v (need %s, %s, %s and %s)",
		s.cfg.Dir, missing, CACertFile, CAKeyFile, CertChainFile, RootCertFile)
}

// hashFiles returns a digest of the files a reload reads, so that a
// change to any of them reloads them all.
func (s *Store) hashFiles() ([]byte, error) {
	files := cacerts.Files()
	if s.mode == rotation.ModeSelfSigned {
		files = []string{RootCertFile, RootKeyFile}
		if s.external() {
			// rotation.json names the active key in the key store.
			files = []string{RootCertFile, RotationFile}
		}
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(s.path(f))
		if f == RotationFile && errors.Is(err, fs.ErrNotExist) {
			b, err = nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("material: %w", err)
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	return h.Sum(nil), nil
}

// loadPluggedIn reads and validates Istio's cacerts layout.
func (s *Store) loadPluggedIn(ctx context.Context) (*ca.Authority, []byte, error) {
	h, err := s.hashFiles()
	if err != nil {
		return nil, nil, err
	}
	data := map[string][]byte{}
	for _, f := range []string{CACertFile, CertChainFile, RootCertFile} {
		if data[f], err = os.ReadFile(s.path(f)); err != nil {
			return nil, nil, fmt.Errorf("material: %w", err)
		}
	}
	// The key is opened through the key store, never decoded here.
	set, err := cacerts.Decode(data, false)
	if err != nil {
		return nil, nil, fmt.Errorf("material: plugged-in CA in %s: %w", s.cfg.Dir, err)
	}
	key, err := dirKeys(s.cfg.Dir).Open(ctx, "ca-key")
	if err != nil {
		return nil, nil, fmt.Errorf("material: %w", err)
	}
	a, err := ca.NewAuthority(set.Cert, key, ca.ChainAbove(set.Cert, set.Chain, set.Roots), set.Roots)
	if err != nil {
		return nil, nil, fmt.Errorf("material: plugged-in CA in %s: %w", s.cfg.Dir, err)
	}
	return a, h, nil
}

// loadOrCreateRoot loads the self-signed root, creating it on first start.
func (s *Store) loadOrCreateRoot(ctx context.Context) (*ca.Authority, error) {
	certPath, keyPath := s.path(RootCertFile), s.path(RootKeyFile)
	if s.external() {
		if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
			return s.createRoot(ctx)
		}
		return s.loadRoot(ctx)
	}
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return s.loadRoot(ctx)
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return s.createRoot(ctx)
	case certErr == nil:
		return nil, fmt.Errorf("material: %s exists but its key %s is missing; refusing to create a new root over it", certPath, keyPath)
	case keyErr == nil:
		return nil, fmt.Errorf("material: %s exists but its certificate %s is missing; refusing to create a new root over it", keyPath, certPath)
	}
	return nil, fmt.Errorf("material: %w", errors.Join(certErr, keyErr))
}

// external reports whether the self-signed root's key is held outside
// the data directory.
func (s *Store) external() bool { return s.cfg.Signer != nil || s.cfg.Keys != nil }

// externalKey returns the active root's key from the key store: the one
// rotation.json names, else the configured one.
func (s *Store) externalKey(ctx context.Context) (crypto.Signer, error) {
	st, err := rotation.ReadState(s.cfg.Dir)
	if err != nil {
		return nil, err
	}
	return openRootKey(ctx, s.cfg.Keys, s.cfg.Signer, st.Key)
}

// openRootKey returns the key named name in keys, or signer for the
// configured key when there is no key store.
func openRootKey(ctx context.Context, keys KeyStore, signer crypto.Signer, name string) (crypto.Signer, error) {
	if keys != nil {
		k, err := keys.Open(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("material: the active root's key %s: %w", keyLabel(name), err)
		}
		return k, nil
	}
	if name != "" {
		return nil, fmt.Errorf("material: %s names the active root's key %q in the key store, but no key store is configured (give --signer-key-uri)", RotationFile, name)
	}
	if signer == nil {
		return nil, errors.New("material: the root key is held outside the data directory, but no key store is configured (give --signer-key-uri)")
	}
	return signer, nil
}

func keyLabel(name string) string {
	if name == "" {
		return "(the configured key)"
	}
	return fmt.Sprintf("%q", name)
}

func (s *Store) loadRoot(ctx context.Context) (*ca.Authority, error) {
	certs, err := pemfile.ReadCertificates(s.path(RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	var key crypto.Signer
	if s.external() {
		if key, err = s.externalKey(ctx); err != nil {
			return nil, err
		}
	} else if key, err = dirKeys(s.cfg.Dir).Open(ctx, ""); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	// root-cert.pem is the trust bundle; the active root is the one whose
	// key is root-key.pem. Other roots are being prepared or retired.
	active := matchingRoot(certs, key)
	if active == nil {
		return nil, fmt.Errorf("material: no root in %s matches the key in %s", s.path(RootCertFile), s.path(RootKeyFile))
	}
	a, err := ca.NewAuthority(active, key, nil, certs)
	if err != nil {
		return nil, fmt.Errorf("material: self-signed root in %s: %w", s.cfg.Dir, err)
	}
	return a, nil
}

// matchingRoot returns the root of bundle whose public key is key's, or
// nil.
func matchingRoot(bundle []*x509.Certificate, key crypto.Signer) *x509.Certificate {
	for _, c := range bundle {
		if pemfile.SameKey(key.Public(), c.PublicKey) {
			return c
		}
	}
	return nil
}

func (s *Store) createRoot(ctx context.Context) (*ca.Authority, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A key in the data directory is created first, exclusively: if two
	// processes race on one directory, one of them fails here instead of
	// overwriting the other's.
	var key crypto.Signer
	var err error
	if s.external() {
		if key, err = s.externalKey(ctx); err != nil {
			return nil, err
		}
	} else if key, err = dirKeys(s.cfg.Dir).Create(ctx, ""); err != nil {
		return nil, fmt.Errorf("material: could not create the root key: %w", err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: s.cfg.TrustDomain, TTL: s.cfg.RootTTL})
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	if err := pemfile.WriteCertificates(s.path(RootCertFile), []*x509.Certificate{root}); err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	s.cfg.Logger.Info("created a self-signed root", "dir", s.cfg.Dir, "subject", root.Subject.String(), "not_after", root.NotAfter)
	return ca.NewAuthority(root, key, nil, []*x509.Certificate{root})
}
