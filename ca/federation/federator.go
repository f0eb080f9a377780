// Package federation federates the CA's trust domain with others, as the
// SPIFFE Trust Domain and Bundle specification describes.
//
// An Endpoint serves the local trust domain's bundle (X.509 and JWT
// authorities, spiffe_sequence, spiffe_refresh_hint) over TLS, with the
// https_spiffe or the https_web profile. A Federator polls the bundle
// endpoints of foreign trust domains (Relationship, from --federate-with)
// at their refresh hints, keeps the last good bundle of each when a fetch
// fails or is refused, and publishes the set as a federated-bundles.json
// document (package trust/federated) in the data directory, from which
// agents serve them.
package federation

import (
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/backoff"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/smallfile"
	"github.com/castellan-mesh/castellan/trust/federated"
)

// Defaults of Config.
const (
	DefaultMinRefresh   = 30 * time.Second
	DefaultMaxRefresh   = time.Hour
	DefaultRefresh      = 5 * time.Minute
	DefaultFetchTimeout = 10 * time.Second
)

// Config configures a Federator. Zero values select the noted defaults.
type Config struct {
	// TrustDomain is the local trust domain; no relationship may name it.
	// Required.
	TrustDomain spiffeid.TrustDomain
	// Relationships are the foreign trust domains, one each.
	Relationships []Relationship
	// DataDir receives federated-bundles.json, which is also read at
	// start so that the last good bundles survive a restart. Required.
	DataDir string
	// MinRefresh and MaxRefresh bound the interval between two fetches of
	// one endpoint, whatever its refresh hint says. Defaults:
	// DefaultMinRefresh, DefaultMaxRefresh.
	MinRefresh, MaxRefresh time.Duration
	// DefaultRefresh is the interval for a bundle without a refresh hint.
	// Default: DefaultRefresh.
	DefaultRefresh time.Duration
	// FetchTimeout bounds one fetch. Default: DefaultFetchTimeout.
	FetchTimeout time.Duration
	// Logger receives the Federator's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives its metrics. Default: none.
	Registerer prometheus.Registerer
}

// Federator keeps the bundles of foreign trust domains. Create it with
// New and start it with Run.
type Federator struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	path    string

	mu      sync.Mutex
	peers   []*peer // sorted by trust domain
	doc     []byte
	changed broadcast.Signal // notified and taken under mu: paired with doc
}

// peer is one relationship and its last good bundle.
type peer struct {
	rel     Relationship
	fetcher *fetcher

	// guarded by Federator.mu
	bundle   *spiffebundle.Bundle // nil until one is known
	lastGood time.Time            // when bundle was last fetched (or loaded)
	lastErr  string
}

// New checks cfg, loads the first bundles (the last published document,
// else each https_spiffe relationship's bundle file) and publishes them.
func New(cfg Config) (*Federator, error) {
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	if cfg.MaxRefresh <= 0 {
		cfg.MaxRefresh = DefaultMaxRefresh
	}
	if cfg.DefaultRefresh <= 0 {
		cfg.DefaultRefresh = DefaultRefresh
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("federation: no local trust domain")
	case cfg.DataDir == "":
		return nil, errors.New("federation: no data directory")
	case cfg.MinRefresh > cfg.MaxRefresh:
		return nil, fmt.Errorf("federation: minimum refresh %s is over the maximum %s", cfg.MinRefresh, cfg.MaxRefresh)
	case len(cfg.Relationships) > federated.MaxTrustDomains:
		return nil, fmt.Errorf("federation: %d relationships, over the limit of %d", len(cfg.Relationships), federated.MaxTrustDomains)
	}
	f := &Federator{cfg: cfg, log: cfg.Logger, path: filepath.Join(cfg.DataDir, federated.FileName)}
	persisted := f.loadPersisted()
	seen := map[spiffeid.TrustDomain]bool{}
	for _, rel := range cfg.Relationships {
		switch {
		case rel.TrustDomain == cfg.TrustDomain:
			return nil, fmt.Errorf("federation: %s is the local trust domain; it cannot be federated with", rel.TrustDomain.Name())
		case seen[rel.TrustDomain]:
			return nil, fmt.Errorf("federation: trust domain %s is named twice", rel.TrustDomain.Name())
		}
		seen[rel.TrustDomain] = true
		p := &peer{rel: rel, fetcher: &fetcher{rel: rel}}
		if rel.WebRootsFile != "" {
			certs, err := pemfile.ReadCertificates(rel.WebRootsFile)
			if err != nil {
				return nil, fmt.Errorf("federation: %s: roots: %w", rel.TrustDomain.Name(), err)
			}
			p.fetcher.roots = x509.NewCertPool()
			for _, c := range certs {
				p.fetcher.roots.AddCert(c)
			}
		}
		if b := persisted[rel.TrustDomain]; b != nil {
			p.bundle = b
		} else if rel.BundleFile != "" {
			b, err := loadBundleFile(rel.TrustDomain, rel.BundleFile)
			if err != nil {
				return nil, err
			}
			p.bundle = b
		}
		if p.bundle != nil {
			p.lastGood = time.Now()
		}
		f.peers = append(f.peers, p)
	}
	slices.SortFunc(f.peers, func(a, b *peer) int { return strings.Compare(a.rel.TrustDomain.Name(), b.rel.TrustDomain.Name()) })
	m, err := newMetrics(cfg.Registerer, f)
	if err != nil {
		return nil, err
	}
	f.metrics = m
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("federation: data directory: %w", err)
	}
	if err := f.publish(); err != nil {
		return nil, err
	}
	return f, nil
}

// loadPersisted reads the last published document. A document that is
// missing or does not parse is not an error: the bundle files and the
// endpoints supply the bundles then.
func (f *Federator) loadPersisted() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	data, err := smallfile.Read(f.path, federated.MaxDocumentSize)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			f.log.Warn("federation: could not read the last federated bundles; starting from the bundle files", "file", f.path, "error", err)
		}
		return nil
	}
	bundles, err := federated.Parse(data)
	if err != nil {
		f.log.Warn("federation: the last federated bundles do not parse; starting from the bundle files", "file", f.path, "error", err)
		return nil
	}
	out := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for _, b := range bundles {
		out[b.TrustDomain()] = b
	}
	return out
}

func loadBundleFile(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	data, err := smallfile.Read(path, federated.MaxBundleSize)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: bundle: %w", td.Name(), err)
	}
	b, err := checkBundle(td, data, nil)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: bundle file %s: %w", td.Name(), path, err)
	}
	return b, nil
}

// bundlesLocked returns the last good bundle of every foreign trust
// domain that has one, sorted by trust domain. f.mu is held.
func (f *Federator) bundlesLocked() []*spiffebundle.Bundle {
	var out []*spiffebundle.Bundle
	for _, p := range f.peers {
		if p.bundle != nil {
			out = append(out, p.bundle)
		}
	}
	return out
}

// Document returns the current federated-bundles.json document and a
// channel closed when it changes.
func (f *Federator) Document() ([]byte, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.doc, f.changed.C()
}

// publish writes the document of the current bundles, if it changed.
func (f *Federator) publish() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	doc, err := federated.Marshal(f.bundlesLocked())
	if err != nil {
		return err
	}
	if bytes.Equal(doc, f.doc) {
		return nil
	}
	if err := pemfile.WriteFileAtomic(f.path, doc, 0o644); err != nil {
		return fmt.Errorf("federation: writing %s: %w", f.path, err)
	}
	f.doc = doc
	f.changed.Notify()
	return nil
}

// Run polls every endpoint until ctx ends.
func (f *Federator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range f.peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.poll(ctx, p)
		}()
	}
	f.log.Info("federation: polling foreign bundle endpoints", "trust_domains", len(f.peers))
	wg.Wait()
	return nil
}

// poll fetches p's bundle at its refresh hint until ctx ends. After a
// failure it retries sooner, from MinRefresh doubling up to the hint.
func (f *Federator) poll(ctx context.Context, p *peer) {
	retry := time.Duration(0)
	for {
		wait := f.refresh(ctx, p, &retry)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refresh fetches p's bundle once and returns the time to wait before the
// next fetch.
func (f *Federator) refresh(ctx context.Context, p *peer, retry *time.Duration) time.Duration {
	td := p.rel.TrustDomain.Name()
	f.mu.Lock()
	current := p.bundle
	f.mu.Unlock()
	interval := f.interval(current)
	if p.rel.Profile == ProfileSPIFFE && current == nil {
		// Cannot happen (the bundle file is required); never fetch
		// without something to authenticate the endpoint with.
		return interval
	}
	b, err := p.fetcher.fetch(ctx, current, f.cfg.FetchTimeout)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		reason := ReasonUnreachable
		var fe *FetchError
		if errors.As(err, &fe) {
			reason = fe.Reason
		}
		f.metrics.failures.WithLabelValues(td, reason).Inc()
		f.mu.Lock()
		repeated := p.lastErr == err.Error()
		p.lastErr = err.Error()
		f.mu.Unlock()
		level := slog.LevelError
		if repeated {
			level = slog.LevelDebug
		}
		f.log.Log(ctx, level, "federation: refresh refused; keeping the last good bundle", "trust_domain", td, "url", p.rel.URL, "reason", reason, "error", err, "has_bundle", current != nil)
		*retry = min(max(2**retry, f.cfg.MinRefresh), interval)
		return backoff.Jitter(*retry)
	}
	*retry = 0
	changed := current == nil || !b.Equal(current)
	f.mu.Lock()
	recovered := p.lastErr != ""
	p.bundle, p.lastGood, p.lastErr = b, time.Now(), ""
	f.mu.Unlock()
	if recovered {
		f.log.Info("federation: refresh succeeds again", "trust_domain", td)
	}
	if changed {
		seq, _ := b.SequenceNumber()
		f.metrics.updates.WithLabelValues(td).Inc()
		f.log.Info("federation: new bundle", "trust_domain", td, "sequence", seq, "x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
		if err := f.publish(); err != nil {
			f.log.Error("federation: could not publish the federated bundles", "error", err)
		}
	}
	// Jittered, so that many CAs restarted together do not poll in step.
	return backoff.Jitter(f.interval(b))
}

// interval is the time between two fetches of a bundle: its refresh hint,
// bounded.
func (f *Federator) interval(b *spiffebundle.Bundle) time.Duration {
	d := f.cfg.DefaultRefresh
	if b != nil {
		if hint, ok := b.RefreshHint(); ok && hint > 0 {
			d = hint
		}
	}
	return min(max(d, f.cfg.MinRefresh), f.cfg.MaxRefresh)
}
