// Package upstream runs Castellan as an intermediate under an upstream CA,
// such as Vault's PKI engine. The intermediate's key stays where the kms
// package keeps it (a file, an HSM, Vault Transit); the upstream only signs
// the intermediate certificate, at start-up and again before it expires.
// Leaves are signed in-process with the intermediate, so a slow or absent
// upstream never delays issuance: the CA keeps signing with the current
// intermediate while renewal retries with backoff.
package upstream

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/backoff"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Files the Source keeps in its data directory.
const (
	// CertFile is the signed intermediate certificate.
	CertFile = "upstream-ca-cert.pem"
	// ChainFile holds the certificates above the intermediate, ending with
	// the upstream root.
	ChainFile = "upstream-cert-chain.pem"
	// RootCertFile is the trust bundle, as in every CA mode.
	RootCertFile = material.RootCertFile
)

// Authority is an upstream CA that signs Castellan's intermediate.
type Authority interface {
	// SignIntermediate signs the PEM CSR as a CA certificate valid for
	// ttl. It returns the certificate and the certificates above it,
	// nearest first, ending with the upstream's root.
	SignIntermediate(ctx context.Context, csrPEM []byte, ttl time.Duration) (cert *x509.Certificate, chain []*x509.Certificate, err error)
	// String names the upstream in logs and errors.
	String() string
}

// Config configures a Source. Zero values select the noted defaults.
type Config struct {
	// Upstream signs the intermediate. Required.
	Upstream Authority
	// Signer is the intermediate's key. Required.
	Signer crypto.Signer
	// TrustDomain is named in the intermediate's subject and URI SAN.
	// Required.
	TrustDomain spiffeid.TrustDomain
	// DataDir keeps the signed intermediate, so that a restart while the
	// upstream is down still has something to sign with, and the trust
	// bundle (root-cert.pem). Required.
	DataDir string
	// TTL is the intermediate lifetime asked of the upstream. Default: 72h.
	TTL time.Duration
	// RenewFraction is the share of the intermediate's lifetime after
	// which it is renewed, in (0, 1). Default: 0.5.
	RenewFraction float64
	// RetryMin and RetryMax bound the backoff between failed renewals.
	// Defaults: 2s and 5m.
	RetryMin, RetryMax time.Duration
	// Logger receives renewal events. Default: slog.Default().
	Logger *slog.Logger
	// ReloadInterval is how often rotation.json is checked for a step
	// taken by hand (a Backend's). Default: 5s.
	ReloadInterval time.Duration
	// RotationPolicy holds the waits between rotation phases: how long
	// the roots of a previous run stay in the bundle, and Rotation's.
	RotationPolicy rotation.Policy
	// Registerer, if set, receives the Source's metrics.
	Registerer prometheus.Registerer
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
}

// Source is a ca.Notifier whose intermediate an upstream CA signs. It is
// safe for concurrent use.
type Source struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	cur     atomic.Pointer[ca.Authority]
	changed broadcast.Signal

	mu          sync.Mutex  // serialises renewals and bundle changes
	rot         dirRotation // guarded by mu
	stateMu     sync.Mutex
	lastErr     error
	failingFrom time.Time
	next        time.Time
	// obtained records when the current intermediate was received.
	obtained struct {
		cert *x509.Certificate
		at   time.Time
	}
	// retained are earlier roots kept in the bundle until the leaves
	// signed under them have expired.
	retained []retainedRoot
}

// dirRotation is the root rotation state last read from the data directory.
type dirRotation struct {
	st   rotation.State
	next *x509.Certificate // the prepared root, until retirement
	seen string            // rotation.json and the prepared root, as read
	err  string            // the last error reading them, logged once
}

type retainedRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// New returns a Source with a usable intermediate: the one kept in
// cfg.DataDir if it matches the key and is within its renewal window,
// otherwise a new one from the upstream. It fails when it has neither.
func New(ctx context.Context, cfg Config) (*Source, error) {
	switch {
	case cfg.Upstream == nil:
		return nil, errors.New("upstream: no upstream authority")
	case cfg.Signer == nil:
		return nil, errors.New("upstream: no intermediate key")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("upstream: no trust domain")
	case cfg.DataDir == "":
		return nil, errors.New("upstream: no data directory")
	case cfg.RenewFraction < 0 || cfg.RenewFraction >= 1:
		return nil, fmt.Errorf("upstream: renew fraction %g is not in (0, 1)", cfg.RenewFraction)
	case cfg.TTL < 0:
		return nil, fmt.Errorf("upstream: intermediate TTL %s is negative", cfg.TTL)
	}
	cfg.TTL = cmp.Or(cfg.TTL, 72*time.Hour)
	cfg.RenewFraction = cmp.Or(cfg.RenewFraction, 0.5)
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 2 * time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Minute, cfg.RetryMin)
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = 5 * time.Second
	}
	if err := checkDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg, log: cfg.Logger.With("upstream", cfg.Upstream.String())}
	rot, _, err := s.readRotation()
	if err != nil {
		return nil, err
	}
	s.rot = rot
	if _, err := s.authority(); err != nil {
		return nil, err
	}
	if s.m, err = newMetrics(cfg.Registerer, s); err != nil {
		return nil, err
	}
	// The bundle a previous run served, if any.
	served, servedErr := pemfile.ReadCertificates(filepath.Join(cfg.DataDir, RootCertFile))
	a, err := s.loadCached(served, servedErr)
	s.retainServed(served, a)
	switch {
	case err != nil:
		s.log.Warn("the kept intermediate cannot be used; asking the upstream for a new one", "dir", cfg.DataDir, "error", err)
	case a != nil:
		s.cur.Store(a)
		s.log.Info("loaded the kept intermediate", "subject", a.Cert.Subject.String(), "not_after", a.Cert.NotAfter)
		s.mu.Lock()
		err := s.rebundle()
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	if a == nil || !s.cfg.Now().Before(s.renewAt(a)) || s.switchDue() {
		if err := s.Renew(ctx); err != nil {
			if a == nil {
				return nil, fmt.Errorf("upstream: no usable intermediate in %s, and %s did not sign one: %w", cfg.DataDir, cfg.Upstream, err)
			}
			// Still valid: sign with it, and let Run retry.
			s.log.Error("renewing the intermediate failed; signing with the kept one until it expires", "not_after", a.Cert.NotAfter, "error", err)
		}
	}
	return s, nil
}

// checkDataDir refuses a directory that holds another CA mode's key, so
// that switching modes never overwrites another root's trust bundle.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("upstream: data directory: %w", err)
	}
	for _, f := range []string{material.RootKeyFile, material.CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("upstream: %s holds %s, the material of a self-signed or plugged-in CA; use another data directory for an upstream-signed CA", dir, f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("upstream: %w", err)
		}
	}
	return nil
}

// Authority returns the Authority to sign with now.
func (s *Source) Authority() *ca.Authority { return s.cur.Load() }

// Changed returns a channel closed when the intermediate is renewed or
// the trust bundle changes.
func (s *Source) Changed() <-chan struct{} { return s.changed.C() }

// Ready reports whether the CA can sign. A failing renewal does not make
// the CA unready while the intermediate is valid; the message says so.
func (s *Source) Ready() (bool, string) {
	a := s.cur.Load()
	now := s.cfg.Now()
	switch {
	case a == nil:
		return false, "no intermediate"
	case !now.Before(a.NotAfter()):
		return false, fmt.Sprintf("the intermediate expired at %s and %s has not signed a new one", a.NotAfter().UTC().Format(time.RFC3339), s.cfg.Upstream)
	}
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.lastErr != nil {
		return true, fmt.Sprintf("ok, but renewal has failed since %s (intermediate expires at %s): %v",
			s.failingFrom.UTC().Format(time.RFC3339), a.NotAfter().UTC().Format(time.RFC3339), s.lastErr)
	}
	return true, "ok"
}

// LastError returns the error of the latest renewal, or nil if it succeeded.
func (s *Source) LastError() error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	return s.lastErr
}

// renewAt is when a is due for renewal: RenewFraction of the way from
// when it was obtained to its expiry. The start is the later of its
// NotBefore and the time this Source received it, since upstreams backdate
// NotBefore (Vault by 30s) and a short-lived intermediate must not look
// due the moment it arrives.
func (s *Source) renewAt(a *ca.Authority) time.Time {
	start := a.Cert.NotBefore
	s.stateMu.Lock()
	if s.obtained.cert == a.Cert && s.obtained.at.After(start) {
		start = s.obtained.at
	}
	s.stateMu.Unlock()
	life := a.Cert.NotAfter.Sub(start)
	return start.Add(time.Duration(float64(life) * s.cfg.RenewFraction))
}

// Run renews the intermediate when it is due, retrying failures with
// jittered exponential backoff, until ctx ends.
// It also takes the steps of a root rotation recorded in the data
// directory by hand (see Backend).
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.watchRotation(ctx) })
	retry := backoff.Exponential{Initial: s.cfg.RetryMin, Max: s.cfg.RetryMax}
	failures := 0
	for {
		var wait time.Duration
		if failures > 0 {
			wait = retry.Next(failures)
		} else if a := s.cur.Load(); a != nil {
			wait = s.renewAt(a).Sub(s.cfg.Now())
		}
		s.stateMu.Lock()
		s.next = s.cfg.Now().Add(max(wait, 0))
		s.stateMu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := s.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			a := s.cur.Load()
			s.log.Error("renewing the intermediate failed; still signing with the current one",
				"error", err, "retry_in", retry.Wait(failures), "intermediate_not_after", a.NotAfter(),
				"time_left", a.NotAfter().Sub(s.cfg.Now()).Round(time.Second))
			continue
		}
		failures = 0
	}
}

// Renew has the upstream sign a new intermediate for the key, and signs
// with it from now on.
func (s *Source) Renew(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.renew(ctx)
	if err != nil {
		s.m.failures.Inc()
		s.stateMu.Lock()
		if s.lastErr == nil {
			s.failingFrom = s.cfg.Now()
		}
		s.lastErr = err
		s.stateMu.Unlock()
		return err
	}
	s.m.renewals.Inc()
	s.stateMu.Lock()
	s.lastErr = nil
	s.failingFrom = time.Time{}
	s.obtained.cert, s.obtained.at = a.Cert, s.cfg.Now()
	s.stateMu.Unlock()
	s.cur.Store(a)
	s.changed.Notify()
	s.log.Info("renewed the intermediate", "issuer", s.rot.st.Issuer, "subject", a.Cert.Subject.String(), "serial", a.Cert.SerialNumber.Text(16),
		"not_before", a.Cert.NotBefore, "not_after", a.Cert.NotAfter, "root", a.Root().Subject.String(), "renew_at", s.renewAt(a))
	return nil
}

func (s *Source) renew(ctx context.Context) (*ca.Authority, error) {
	csr, err := s.csr()
	if err != nil {
		return nil, err
	}
	up, err := s.authority()
	if err != nil {
		return nil, err
	}
	cert, chain, err := up.SignIntermediate(ctx, csr, s.cfg.TTL)
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("upstream: %s returned no chain above the intermediate", up)
	}
	if !cert.NotAfter.After(s.cfg.Now()) {
		return nil, fmt.Errorf("upstream: %s signed an intermediate that expired at %s", up, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	root := chain[len(chain)-1]
	if s.retired(root) {
		return nil, fmt.Errorf("upstream: %s signed under root %q, which a rotation retired; name the new root's issuer", up, root.Subject)
	}
	roots, retained := s.bundle(root)
	a, err := ca.NewAuthority(cert, s.cfg.Signer, chain, roots)
	if err != nil {
		return nil, fmt.Errorf("upstream: the certificate %s signed: %w", up, err)
	}
	s.retained = retained
	if err := s.persist(a); err != nil {
		// Signing goes on; only a restart during an outage is affected.
		s.log.Error("could not keep the intermediate in the data directory", "dir", s.cfg.DataDir, "error", err)
	}
	return a, nil
}

// bundle returns the trust bundle for an intermediate under root (root,
// any earlier root that still-valid leaves chain to, unless a rotation
// retired it, and a prepared root) and the earlier roots to keep. s.mu is
// held.
func (s *Source) bundle(root *x509.Certificate) ([]*x509.Certificate, []retainedRoot) {
	now := s.cfg.Now()
	candidates := append([]retainedRoot(nil), s.retained...)
	if old := s.cur.Load(); old != nil && !old.Root().Equal(root) {
		candidates = append(candidates, retainedRoot{cert: old.Root(), until: old.NotAfter()})
	}
	roots := []*x509.Certificate{root}
	var kept []retainedRoot
	for _, r := range candidates {
		if now.Before(r.until) && !containsCert(roots, r.cert) && !s.retired(r.cert) {
			kept = append(kept, r)
			roots = append(roots, r.cert)
		}
	}
	if next := s.rot.next; next != nil && !containsCert(roots, next) {
		roots = append(roots, next)
	}
	return roots, kept
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(list, c.Equal)
}

// csr makes the intermediate's certificate request, signed by its key.
func (s *Source) csr() ([]byte, error) {
	id := s.cfg.TrustDomain.ID().URL()
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{
			Organization: []string{s.cfg.TrustDomain.Name()},
			CommonName:   "Castellan Intermediate CA",
		},
		URIs: []*url.URL{id},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, s.cfg.Signer)
	if err != nil {
		return nil, fmt.Errorf("upstream: could not sign the intermediate's CSR with its key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// loadCached returns the intermediate kept in the data directory, with
// roots (read from root-cert.pem, or rootsErr) as its bundle: nil if there
// is none, or an error if it is there but unusable.
func (s *Source) loadCached(roots []*x509.Certificate, rootsErr error) (*ca.Authority, error) {
	certPath := filepath.Join(s.cfg.DataDir, CertFile)
	if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	certs, err := pemfile.ReadCertificates(certPath)
	if err != nil {
		return nil, err
	}
	chain, err := pemfile.ReadCertificates(filepath.Join(s.cfg.DataDir, ChainFile))
	if err != nil {
		return nil, err
	}
	if rootsErr != nil {
		return nil, rootsErr
	}
	cert := certs[0]
	if !cert.NotAfter.After(s.cfg.Now()) {
		return nil, fmt.Errorf("%s expired at %s", certPath, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	a, err := ca.NewAuthority(cert, s.cfg.Signer, chain, roots)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	return a, nil
}

// retainServed keeps the roots of the bundle a previous run served, since
// leaves it signed under them may still be valid: until the kept
// intermediate expires, and at least the longest SVID lifetime.
func (s *Source) retainServed(roots []*x509.Certificate, kept *ca.Authority) {
	until := s.cfg.RotationPolicy.RetireAfter(s.cfg.Now())
	if kept != nil && kept.Cert.NotAfter.After(until) {
		until = kept.Cert.NotAfter
	}
	for _, r := range roots {
		if kept == nil || !r.Equal(kept.Root()) {
			s.retained = append(s.retained, retainedRoot{cert: r, until: until})
		}
	}
}

// persist writes a's intermediate, chain and bundle to the data directory.
// The bundle is written last, and only when it changed.
func (s *Source) persist(a *ca.Authority) error {
	dir := s.cfg.DataDir
	if err := pemfile.WriteCertificates(filepath.Join(dir, ChainFile), a.Chain); err != nil {
		return err
	}
	if err := pemfile.WriteCertificates(filepath.Join(dir, CertFile), []*x509.Certificate{a.Cert}); err != nil {
		return err
	}
	bundle := a.BundlePEM()
	if old, err := os.ReadFile(filepath.Join(dir, RootCertFile)); err == nil && bytes.Equal(old, bundle) {
		return nil
	}
	return pemfile.WriteFileAtomic(filepath.Join(dir, RootCertFile), bundle, 0o644)
}

// authority returns the upstream to sign with: the configured one, or the
// issuer a root rotation activated. s.mu is held, or s is being built.
func (s *Source) authority() (Authority, error) {
	ref := s.rot.st.Issuer
	if ref == "" {
		return s.cfg.Upstream, nil
	}
	m, ok := s.cfg.Upstream.(interface{ WithIssuer(string) Authority })
	if !ok {
		return nil, fmt.Errorf("upstream: %s names issuer %q, but %s has a single issuer", filepath.Join(s.cfg.DataDir, rotation.File), ref, s.cfg.Upstream)
	}
	return m.WithIssuer(ref), nil
}

// readRotation reads the rotation state and the prepared root from the
// data directory, and reports whether they changed since s.rot.
func (s *Source) readRotation() (dirRotation, bool, error) {
	statePath := filepath.Join(s.cfg.DataDir, rotation.File)
	raw, err := readOptional(statePath)
	if err != nil {
		return dirRotation{}, false, err
	}
	nextPath := filepath.Join(s.cfg.DataDir, NextRootCertFile)
	next, err := readOptional(nextPath)
	if err != nil {
		return dirRotation{}, false, err
	}
	seen := string(raw) + "\x00" + string(next)
	if seen == s.rot.seen {
		return s.rot, false, nil
	}
	r := dirRotation{seen: seen, st: rotation.State{Phase: rotation.PhaseSteady}}
	if raw != nil {
		if r.st, err = rotation.ParseState(statePath, raw); err != nil {
			return dirRotation{}, false, err
		}
	}
	if next != nil {
		if r.next, err = parseNextRoot(nextPath, next); err != nil {
			return dirRotation{}, false, err
		}
	}
	if r.st.Phase != rotation.PhaseSteady && r.next == nil {
		return dirRotation{}, false, fmt.Errorf("upstream: %s says %s, but %s is missing", rotation.File, r.st.Phase, NextRootCertFile)
	}
	return r, true, nil
}

// retired reports whether a rotation retired root c.
func (s *Source) retired(c *x509.Certificate) bool {
	return slices.Contains(s.rot.st.Retired, rotation.Fingerprint(c))
}

// switchDue reports whether an activated rotation waits for the
// intermediate to be renewed under the new root. s.mu is held, or s is
// being built.
func (s *Source) switchDue() bool {
	a := s.cur.Load()
	return s.rot.st.Phase == rotation.PhaseActivated && s.rot.next != nil && a != nil && !a.Root().Equal(s.rot.next)
}

// watchRotation takes the rotation steps recorded in the data directory,
// every ReloadInterval, until ctx ends.
func (s *Source) watchRotation(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.reloadRotation(ctx)
	}
}

// reloadRotation applies a changed rotation state: a prepared root joins
// the bundle, an activated issuer signs a new intermediate, a retired root
// leaves the bundle. An unreadable state is logged and the current one
// kept.
func (s *Source) reloadRotation(ctx context.Context) {
	s.mu.Lock()
	rot, changed, err := s.readRotation()
	if err != nil {
		if msg := err.Error(); msg != s.rot.err {
			s.rot.err = msg
			s.log.Error("cannot read the root rotation state; keeping the current one", "dir", s.cfg.DataDir, "error", err)
		}
		s.mu.Unlock()
		return
	}
	if changed {
		prev := s.rot.st
		s.rot = rot
		if _, err := s.authority(); err != nil {
			s.log.Error("cannot take the root rotation step", "error", err)
			s.rot.st.Issuer = prev.Issuer
		}
		s.log.Info("root rotation state changed", "phase", rot.st.Phase, "issuer", rot.st.Issuer, "next_issuer", rot.st.NextIssuer)
		if err := s.rebundle(); err != nil {
			s.log.Error("cannot update the trust bundle for the root rotation", "error", err)
		}
	}
	due := s.switchDue()
	s.mu.Unlock()
	if due {
		s.log.Info("root rotation activated: having the new issuer sign the intermediate", "issuer", rot.st.Issuer)
		if err := s.Renew(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("the new issuer did not sign the intermediate; still signing under the old root, retrying", "issuer", rot.st.Issuer, "retry_in", s.cfg.ReloadInterval, "error", err)
		}
	}
}

// rebundle recomputes the current intermediate's trust bundle and, if it
// changed, serves and keeps the new one. s.mu is held.
func (s *Source) rebundle() error {
	a := s.cur.Load()
	if a == nil {
		return nil
	}
	roots, retained := s.bundle(a.Root())
	if slices.EqualFunc(roots, a.Roots, (*x509.Certificate).Equal) {
		return nil
	}
	b, err := ca.NewAuthority(a.Cert, a.Signer, a.Chain, roots)
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	s.retained = retained
	// The data directory first: whoever sees the new bundle served (a
	// "castellan ca rotate status" after a retire) finds it on disk too.
	err = s.persist(b)
	s.cur.Store(b)
	s.changed.Notify()
	s.log.Info("trust bundle changed", "roots", len(roots))
	return err
}

// Rotation returns the root rotation of the Source's data directory
// under its RotationPolicy, for its status and for activate and retire.
// A prepare needs the upstream's issuer manager, with the operator's
// credentials rather than the CA's: "castellan ca rotate prepare" makes
// its own Backend.
func (s *Source) Rotation() *rotation.Engine {
	return &rotation.Engine{Backend: &Backend{Dir: s.cfg.DataDir, TrustDomain: s.cfg.TrustDomain, Logger: s.log}, Policy: s.cfg.RotationPolicy, Logger: s.log}
}
