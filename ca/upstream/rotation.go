package upstream

import (
	"cmp"
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

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NextRootCertFile holds the root of a prepared rotation, in the data
// directory, from prepare until retire.
const NextRootCertFile = material.NextRootCertFile

// Backend keeps the root rotation of an upstream-signed CA, for
// rotation.Engine: it moves the CA from one upstream issuer to another
// (two issuers of one Vault PKI mount). It works on the CA's data
// directory and records each step in rotation.json; the running CA (a
// Source on the same directory) takes the step within its reload
// interval: after prepare it serves the new root in its bundle, after
// activate it has the new issuer sign its intermediate, after retire it
// drops the old root from its bundle.
//
// Prepare's from names an existing issuer of the mount (a name or ID);
// empty has the upstream create a new root. Activate refuses while the
// CA has not served the new root yet, and Retire while the CA still signs
// under the old root, unless forced.
type Backend struct {
	// Dir is the CA's data directory. Required.
	Dir string
	// Upstream creates and looks up issuers. Required by Prepare.
	Upstream IssuerManager
	// TrustDomain is named in a new root created by Prepare.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a root created by Prepare. Default: 10
	// years.
	RootTTL time.Duration
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
}

func (r *Backend) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Backend) path(name string) string { return filepath.Join(r.Dir, name) }

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

// Load reads the data directory of an upstream-signed CA. The active
// root is the root of the kept intermediate's chain.
func (r *Backend) Load(context.Context) (*rotation.Material, error) {
	chain, err := pemfile.ReadCertificates(r.path(ChainFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("upstream: %s holds no upstream-signed intermediate (%s is missing); start the CA with --upstream first", r.Dir, ChainFile)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	m := &rotation.Material{
		Mode: rotation.ModeUpstream, Active: chain[len(chain)-1],
		Manual: errors.New("upstream: the root of an upstream-signed CA is rotated by hand"),
	}
	if m.State, err = rotation.ReadState(r.Dir); err != nil {
		return nil, err
	}
	if m.Bundle, err = pemfile.ReadCertificates(r.path(RootCertFile)); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	next, err := readNextRoot(r.Dir)
	if err != nil {
		return nil, err
	}
	if next != nil {
		m.Next = []*x509.Certificate{next}
	}
	return m, nil
}

// Mint looks up the issuer ref, or has the upstream create a new root.
func (r *Backend) Mint(ctx context.Context, _ *rotation.Material, ref string, now time.Time) (*rotation.Minted, error) {
	if r.Upstream == nil {
		return nil, errors.New("upstream: preparing a root needs the upstream (Vault) to look up or create its issuer")
	}
	var (
		iss *Issuer
		err error
	)
	if ref == "" {
		req := RootRequest{
			Name:        "castellan-root-" + now.Format("20060102-150405"),
			CommonName:  "Castellan Root CA " + now.Format("2006-01-02"),
			TrustDomain: r.TrustDomain,
			TTL:         cmp.Or(r.RootTTL, 10*365*24*time.Hour),
		}
		if iss, err = r.Upstream.NewRoot(ctx, req); err != nil {
			return nil, err
		}
		r.log().Info("created a new root in the upstream", "upstream", r.Upstream.String(), "issuer", iss.String())
	} else if iss, err = r.Upstream.LookupIssuer(ctx, ref); err != nil {
		return nil, err
	}
	return &rotation.Minted{Roots: []*x509.Certificate{iss.Root()}, Issuer: iss.ID}, nil
}

// Save writes rotation.json and the prepared root; the running Source
// takes each step within its reload interval.
func (r *Backend) Save(_ context.Context, m *rotation.Material, c rotation.Change) error {
	var next *x509.Certificate
	if len(m.Next) > 0 {
		next = m.Next[0]
	}
	switch c.Step {
	case rotation.StepPrepare:
		if err := pemfile.WriteCertificates(r.path(NextRootCertFile), c.Minted.Roots[:1]); err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
	case rotation.StepActivate:
		switch {
		case next == nil:
			return fmt.Errorf("upstream: %s is missing; prepare the rotation again", r.path(NextRootCertFile))
		case m.State.NextIssuer == "":
			return fmt.Errorf("upstream: %s names no prepared issuer; prepare the rotation again", r.path(rotation.File))
		case !slices.ContainsFunc(m.Bundle, next.Equal) && !c.Force:
			return fmt.Errorf("upstream: the CA has not served the prepared root yet (%s lacks it); is a CA running on %s?", r.path(RootCertFile), r.Dir)
		}
	case rotation.StepRetire:
		if next == nil {
			return fmt.Errorf("upstream: %s is missing; cannot tell the new root from the old", r.path(NextRootCertFile))
		}
		if !m.Active.Equal(next) && !c.Force {
			return fmt.Errorf("upstream: the CA still signs under the old root %q (its intermediate in %s has not been renewed by issuer %s); see the CA's log", m.Active.Subject, r.Dir, m.State.Issuer)
		}
	}
	if err := rotation.WriteState(r.Dir, c.State); err != nil {
		return err
	}
	if c.Step == rotation.StepRetire {
		if err := os.Remove(r.path(NextRootCertFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("upstream: %w", err)
		}
	}
	return nil
}
