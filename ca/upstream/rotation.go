package upstream

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NextRootCertFile holds the root of a prepared rotation, in the data
// directory, from prepare until retire.
const NextRootCertFile = material.NextRootCertFile

// Rotator rotates the root of an upstream-signed CA from one upstream
// issuer to another (two issuers of one Vault PKI mount). It works on the
// CA's data directory and records each step in rotation.json; the running
// CA (a Source on the same directory) takes the step within its reload
// interval: after Prepare it serves the new root in its bundle, after
// Activate it has the new issuer sign its intermediate, after Retire it
// drops the old root from its bundle.
type Rotator struct {
	// Dir is the CA's data directory. Required.
	Dir string
	// Upstream creates and looks up issuers. Required by Prepare.
	Upstream IssuerManager
	// TrustDomain is named in a new root created by Prepare.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a root created by Prepare. Default: 10
	// years.
	RootTTL time.Duration
	// Policy holds the waits between the phases.
	Policy rotation.Policy
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
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

// dirState is what an upstream-signed CA's data directory holds.
type dirState struct {
	st     rotation.State
	active *x509.Certificate   // root of the kept intermediate
	bundle []*x509.Certificate // root-cert.pem, as served
	next   *x509.Certificate   // prepared root, if any
}

// read loads the data directory of an upstream-signed CA.
func (r *Rotator) read() (*dirState, error) {
	chain, err := pemfile.ReadCertificates(r.path(ChainFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("upstream: %s holds no upstream-signed intermediate (%s is missing); start the CA with --upstream first", r.Dir, ChainFile)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	d := &dirState{active: chain[len(chain)-1]}
	if d.st, err = rotation.ReadState(r.Dir); err != nil {
		return nil, err
	}
	if d.bundle, err = pemfile.ReadCertificates(r.path(RootCertFile)); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if d.next, err = readNextRoot(r.Dir); err != nil {
		return nil, err
	}
	return d, nil
}

// readNextRoot returns the prepared root in dir, or nil if there is none.
func readNextRoot(dir string) (*x509.Certificate, error) {
	path := filepath.Join(dir, NextRootCertFile)
	b, err := readOptional(path)
	if err != nil || b == nil {
		return nil, err
	}
	return parseNextRoot(path, b)
}

// parseNextRoot decodes the content b of the prepared root file at path.
func parseNextRoot(path string, b []byte) (*x509.Certificate, error) {
	certs, err := pemfile.ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("upstream: %s: %w", path, err)
	}
	return certs[0], nil
}

// readOptional returns the content of the file at path, or nil if there
// is no such file.
func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	return b, nil
}

// begin loads the directory for a step that needs phase want.
func (r *Rotator) begin(ctx context.Context, want rotation.Phase) (*dirState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, err := r.read()
	if err != nil {
		return nil, err
	}
	if err := d.st.Require(want); err != nil {
		return nil, err
	}
	return d, nil
}

// Prepare makes an upstream issuer's root the next root: it joins the
// trust bundle the CA serves, and nothing is signed under it until
// Activate. ref names an existing issuer of the mount (a name or ID);
// empty has the upstream create a new root.
func (r *Rotator) Prepare(ctx context.Context, ref string) (*Issuer, error) {
	if r.Upstream == nil {
		return nil, errors.New("upstream: preparing a root needs the upstream (Vault) to look up or create its issuer")
	}
	d, err := r.begin(ctx, rotation.PhaseSteady)
	if err != nil {
		return nil, err
	}
	now := r.now().UTC()
	var iss *Issuer
	if ref == "" {
		ttl := r.RootTTL
		if ttl <= 0 {
			ttl = 10 * 365 * 24 * time.Hour
		}
		req := RootRequest{
			Name:        "castellan-root-" + now.Format("20060102-150405"),
			CommonName:  "Castellan Root CA " + now.Format("2006-01-02"),
			TrustDomain: r.TrustDomain,
			TTL:         ttl,
		}
		if iss, err = r.Upstream.NewRoot(ctx, req); err != nil {
			return nil, err
		}
		r.log().Info("created a new root in the upstream", "upstream", r.Upstream.String(), "issuer", iss.String())
	} else if iss, err = r.Upstream.LookupIssuer(ctx, ref); err != nil {
		return nil, err
	}
	if err := checkNextRoot(iss, d.active, now, r.Policy); err != nil {
		return nil, err
	}
	if err := pemfile.WriteCertificates(r.path(NextRootCertFile), []*x509.Certificate{iss.Root()}); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	st := rotation.State{Phase: rotation.PhasePrepared, PreparedAt: now, Issuer: d.st.Issuer, NextIssuer: iss.ID, Retired: d.st.Retired}
	if err := rotation.WriteState(r.Dir, st); err != nil {
		return nil, err
	}
	r.log().Info("prepared a new root; the CA adds it to the trust bundle and keeps signing under the old one",
		"dir", r.Dir, "issuer", iss.String(), "subject", iss.Root().Subject.String(), "activate_after", r.Policy.ActivateAfter(now))
	return iss, nil
}

// checkNextRoot refuses an issuer whose root cannot replace active: not a
// root, the active root itself, expired, or expiring before an SVID could.
func checkNextRoot(iss *Issuer, active *x509.Certificate, now time.Time, p rotation.Policy) error {
	root := iss.Root()
	switch {
	case !root.IsCA || !ca.IsSelfSigned(root):
		return fmt.Errorf("upstream: issuer %s chains to %q, which is not a self-signed CA certificate", iss, root.Subject)
	case root.Equal(active):
		return fmt.Errorf("upstream: issuer %s chains to the active root %q; there is nothing to rotate to", iss, root.Subject)
	case now.Before(root.NotBefore) || !now.Before(root.NotAfter):
		return fmt.Errorf("upstream: the root of issuer %s is valid from %s to %s, not now", iss, root.NotBefore.UTC().Format(time.RFC3339), root.NotAfter.UTC().Format(time.RFC3339))
	case root.NotAfter.Before(p.RetireAfter(p.ActivateAfter(now))):
		return fmt.Errorf("upstream: the root of issuer %s expires at %s, before a rotation to it could finish", iss, root.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Activate has the prepared root's issuer sign the CA's intermediate from
// now on. It refuses before the propagation delay has passed, or while the
// CA has not served the new root yet, unless force is set.
func (r *Rotator) Activate(ctx context.Context, force bool) error {
	d, err := r.begin(ctx, rotation.PhasePrepared)
	if err != nil {
		return err
	}
	now := r.now().UTC()
	if err := r.Policy.CheckActivate(d.st, now, force); err != nil {
		return err
	}
	switch {
	case d.next == nil:
		return fmt.Errorf("upstream: %s is missing; prepare the rotation again", r.path(NextRootCertFile))
	case d.st.NextIssuer == "":
		return fmt.Errorf("upstream: %s names no prepared issuer; prepare the rotation again", r.path(rotation.File))
	case !containsCert(d.bundle, d.next) && !force:
		return fmt.Errorf("upstream: the CA has not served the prepared root yet (%s lacks it); is a CA running on %s?", r.path(RootCertFile), r.Dir)
	}
	st := d.st.Activated(now, r.Policy)
	if err := rotation.WriteState(r.Dir, st); err != nil {
		return err
	}
	r.log().Info("activated the new root; the CA has its issuer sign a new intermediate, and keeps the old root in the bundle until its SVIDs expire",
		"dir", r.Dir, "issuer", st.Issuer, "retire_after", st.RetireAfter)
	return nil
}

// Retire drops every root but the new one from the trust bundle. It
// refuses while an SVID signed under the old root may still be valid, or
// while the CA still signs under the old root, unless force is set.
func (r *Rotator) Retire(ctx context.Context, force bool) error {
	d, err := r.begin(ctx, rotation.PhaseActivated)
	if err != nil {
		return err
	}
	if err := r.Policy.CheckRetire(d.st, r.now(), force); err != nil {
		return err
	}
	if d.next == nil {
		return fmt.Errorf("upstream: %s is missing; cannot tell the new root from the old", r.path(NextRootCertFile))
	}
	if !d.active.Equal(d.next) && !force {
		return fmt.Errorf("upstream: the CA still signs under the old root %q (its intermediate in %s has not been renewed by issuer %s); see the CA's log", d.active.Subject, r.Dir, d.st.Issuer)
	}
	retired := slices.Clone(d.st.Retired)
	for _, c := range d.bundle {
		if fp := rotation.Fingerprint(c); !c.Equal(d.next) && !slices.Contains(retired, fp) {
			retired = append(retired, fp)
		}
	}
	st := rotation.State{Phase: rotation.PhaseSteady, Issuer: d.st.Issuer, Retired: retired}
	if err := rotation.WriteState(r.Dir, st); err != nil {
		return err
	}
	if err := os.Remove(r.path(NextRootCertFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("upstream: %w", err)
	}
	r.log().Info("retired the old root; the CA drops it from the trust bundle", "dir", r.Dir, "issuer", st.Issuer)
	return nil
}

// Status reports the roots of the bundle the CA serves, the prepared root
// if the CA has not served it yet, and the rotation phase.
func (r *Rotator) Status(ctx context.Context) (*rotation.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, err := r.read()
	if err != nil {
		return nil, err
	}
	out := r.Policy.Status(rotation.ModeUpstream, d.st)
	roots := d.bundle
	if d.next != nil && d.st.Phase == rotation.PhasePrepared && !containsCert(roots, d.next) {
		roots = append(slices.Clone(roots), d.next)
	}
	out.AddRoots(roots, d.active, d.next)
	return out, nil
}
