package federation

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	gofederation "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/netutil"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/internal/backoff"
	"github.com/castellan-mesh/castellan/internal/filewatch"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// MaxEndpointConnections is the most connections the bundle endpoint
// serves at once.
const MaxEndpointConnections = 256

// Defaults of EndpointConfig.
const (
	DefaultRefreshHint = 5 * time.Minute
	// DefaultEndpointPath is the path of the endpoint's SPIFFE ID under
	// the trust domain, for https_spiffe.
	DefaultEndpointPath = "/castellan/bundle-endpoint"
	// endpointSVIDTTL is the lifetime of the https_spiffe serving SVID; it
	// is renewed at half.
	endpointSVIDTTL = 24 * time.Hour
)

// webCertCheck is how often the https_web certificate files are checked
// for a change.
var webCertCheck = 5 * time.Second

// JWTAuthoritySource gives the local trust domain's JWT authorities, by
// key ID. The CA's JWT key ring implements it; the bundle endpoint
// publishes what it returns beside the X.509 authorities.
type JWTAuthoritySource interface {
	JWTAuthorities() map[string]crypto.PublicKey
}

// EndpointConfig configures an Endpoint. Zero values select the noted
// defaults.
type EndpointConfig struct {
	// Addr is the listen address. Required.
	Addr string
	// TrustDomain is the local trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Source supplies the X.509 authorities (its Authority's Roots) and,
	// for https_spiffe, signs the endpoint's SVID. Required. A
	// ca.Notifier has a new content numbered as soon as it changes; any
	// other Source is checked every few seconds.
	Source ca.Source
	// JWT, if set, supplies the JWT authorities. One that also has
	// Changed (as jwtsvid.KeySet does) is followed as a ca.Notifier is.
	JWT JWTAuthoritySource
	// RefreshHint is the spiffe_refresh_hint served. Default:
	// DefaultRefreshHint.
	RefreshHint time.Duration
	// Profile is how the endpoint authenticates itself. Default:
	// ProfileSPIFFE.
	Profile Profile
	// ID is the SPIFFE ID of the endpoint's SVID (https_spiffe). It must
	// be in TrustDomain. Default: DefaultEndpointPath in TrustDomain.
	ID spiffeid.ID
	// CertFile and KeyFile hold the endpoint's Web PKI certificate chain
	// and key (https_web, required). They are read again when they
	// change; a pair that does not load keeps the last good one.
	CertFile, KeyFile string
	// Sequence keeps the sequence numbers of the bundle's contents, shared
	// by the CA's replicas (see SequenceStore). Default: the file
	// SequenceFileName in DataDir.
	Sequence SequenceStore
	// DataDir keeps the sequence number (SequenceFileName) when Sequence
	// is not set.
	DataDir string
	// Logger receives logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives metrics. Default: none.
	Registerer prometheus.Registerer
}

// Endpoint is the SPIFFE bundle endpoint of the local trust domain. It
// serves the bundle with go-spiffe's federation handler, over TLS, on its
// own port, at every path (the endpoint's URL is its address; /, as SPIRE
// serves it, is the usual one).
type Endpoint struct {
	cfg    EndpointConfig
	log    *slog.Logger
	seq    *sequencer
	issuer *ca.Issuer
	lis    net.Listener
	srv    *http.Server
	served *prometheus.CounterVec

	mu      sync.Mutex
	svid    *tls.Certificate // https_spiffe
	svidFor *ca.Authority
	web     *webCert // https_web
}

// NewEndpoint checks cfg, loads its certificate and binds the listener.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	cfg.Profile = cmp.Or(cfg.Profile, ProfileSPIFFE)
	if cfg.RefreshHint <= 0 {
		cfg.RefreshHint = DefaultRefreshHint
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Profile == ProfileSPIFFE && cfg.ID.IsZero() && !cfg.TrustDomain.IsZero() {
		cfg.ID = spiffeid.RequireFromPath(cfg.TrustDomain, DefaultEndpointPath)
	}
	switch {
	case cfg.Addr == "":
		return nil, errors.New("federation: bundle endpoint: no listen address")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("federation: bundle endpoint: no trust domain")
	case cfg.Source == nil:
		return nil, errors.New("federation: bundle endpoint: no CA material")
	case cfg.Sequence == nil && cfg.DataDir == "":
		return nil, errors.New("federation: bundle endpoint: no data directory for its sequence number")
	case cfg.Profile != ProfileSPIFFE && cfg.Profile != ProfileWeb:
		return nil, fmt.Errorf("federation: bundle endpoint: profile %q is neither %s nor %s", cfg.Profile, ProfileSPIFFE, ProfileWeb)
	case cfg.Profile == ProfileSPIFFE && cfg.ID.TrustDomain() != cfg.TrustDomain:
		return nil, fmt.Errorf("federation: bundle endpoint: SPIFFE ID %s is not in trust domain %s", cfg.ID, cfg.TrustDomain.Name())
	case cfg.Profile == ProfileWeb && (cfg.CertFile == "" || cfg.KeyFile == ""):
		return nil, fmt.Errorf("federation: bundle endpoint: %s needs a certificate file and a key file", ProfileWeb)
	}
	if cfg.Sequence == nil {
		cfg.Sequence = FileSequence(filepath.Join(cfg.DataDir, SequenceFileName))
	}
	e := &Endpoint{cfg: cfg, log: cfg.Logger, seq: newSequencer(cfg.Sequence)}
	var err error
	f := promreg.With(cfg.Registerer)
	e.served = f.CounterVec("castellan_bundle_endpoint_requests_total", "Requests to the SPIFFE bundle endpoint, by result (ok, error).", "result")
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("federation: bundle endpoint: could not register metrics: %w", err)
	}
	if cfg.Profile == ProfileSPIFFE {
		if e.issuer, err = ca.NewIssuer(cfg.Source, ca.Config{DefaultTTL: endpointSVIDTTL, MaxTTL: endpointSVIDTTL}); err != nil {
			return nil, fmt.Errorf("federation: bundle endpoint: %w", err)
		}
	} else {
		if e.web, err = newWebCert(cfg.CertFile, cfg.KeyFile, cfg.Logger); err != nil {
			return nil, err
		}
	}
	// A CA that cannot serve its bundle should fail at start.
	if _, err := e.Bundle(); err != nil {
		return nil, err
	}
	if _, err := e.certificate(nil); err != nil {
		return nil, err
	}
	handler, err := gofederation.NewHandler(cfg.TrustDomain, bundleSource{e})
	if err != nil {
		return nil, fmt.Errorf("federation: bundle endpoint: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("federation: bundle endpoint: %w", err)
	}
	// Past MaxEndpointConnections, new connections wait in the kernel's
	// backlog: a flood of peers cannot exhaust the CA's memory.
	e.lis = netutil.LimitListener(lis, MaxEndpointConnections)
	e.srv = &http.Server{
		Handler:           http.MaxBytesHandler(handler, 1<<10),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: e.certificate},
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return e, nil
}

// Addr returns the bound address.
func (e *Endpoint) Addr() string { return e.lis.Addr().String() }

// ID returns the SPIFFE ID the endpoint presents (https_spiffe), or the
// zero ID (https_web).
func (e *Endpoint) ID() spiffeid.ID {
	if e.cfg.Profile != ProfileSPIFFE {
		return spiffeid.ID{}
	}
	return e.cfg.ID
}

// Serve serves until ctx ends.
func (e *Endpoint) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- e.srv.ServeTLS(e.lis, "", "") }()
	nctx, stopNumbering := context.WithCancel(ctx)
	numbering := make(chan struct{})
	go func() { defer close(numbering); e.numberChanges(nctx) }()
	defer func() { stopNumbering(); <-numbering }()
	e.log.Info("bundle endpoint serving", "addr", e.Addr(), "profile", e.cfg.Profile, "spiffe_id", e.ID().String(), "refresh_hint", e.cfg.RefreshHint)
	select {
	case err := <-errc:
		return fmt.Errorf("federation: bundle endpoint: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.srv.Shutdown(sctx)
	return nil
}

// sequenceCheck is how often the endpoint looks for a new content to
// number when a source of it has no change channel, and how soon it tries
// again after a numbering failed.
var sequenceCheck = 5 * time.Second

// notifier is a source of the bundle's content that says when it changes
// (ca.Notifier, jwtsvid.KeySet): Changed returns a channel closed at the
// next change.
type notifier interface {
	Changed() <-chan struct{}
}

// numberChanges numbers each new content of the bundle as soon as the CA
// material or the JWT authorities change, so that the sequence moves
// when they do, not when the bundle is next asked for, until ctx ends. A
// source without a change channel is checked every sequenceCheck.
func (e *Endpoint) numberChanges(ctx context.Context) {
	src, _ := e.cfg.Source.(notifier)
	jwt, _ := e.cfg.JWT.(notifier)
	poll := src == nil || (e.cfg.JWT != nil && jwt == nil)
	var lastErr string
	for {
		// The channels are taken before the content is read: a change
		// from now on closes one of them.
		srcChanged, jwtChanged := changes(src), changes(jwt)
		_, err := e.Bundle()
		switch {
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			e.log.Error("bundle endpoint: cannot number the bundle's content; will retry", "error", err)
		case err == nil:
			lastErr = ""
		}
		var tick <-chan time.Time // nil: no poll, no retry
		if poll || err != nil {
			tick = time.After(sequenceCheck)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-srcChanged:
		case <-jwtChanged:
		}
	}
}

// changes returns n's change channel, or nil (never ready) without n.
func changes(n notifier) <-chan struct{} {
	if n == nil {
		return nil
	}
	return n.Changed()
}

// Bundle returns the local trust domain's bundle as served now: the
// X.509 authorities, the JWT authorities, the refresh hint and the
// sequence number of this content.
func (e *Endpoint) Bundle() (*spiffebundle.Bundle, error) {
	a := e.cfg.Source.Authority()
	if a == nil {
		return nil, errors.New("federation: no CA material loaded")
	}
	var jwt map[string]crypto.PublicKey
	if e.cfg.JWT != nil {
		jwt = e.cfg.JWT.JWTAuthorities()
	}
	b := spiffebundle.New(e.cfg.TrustDomain)
	b.SetX509Authorities(a.Roots)
	if len(jwt) > 0 {
		b.SetJWTAuthorities(jwt)
	}
	seq, err := e.seq.number(contentDigest(a.Roots, jwt))
	if err != nil {
		return nil, err
	}
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(e.cfg.RefreshHint)
	return b, nil
}

// bundleSource is the spiffebundle.Source of go-spiffe's handler.
type bundleSource struct{ e *Endpoint }

func (s bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.e.cfg.TrustDomain {
		s.e.served.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("federation: no bundle for trust domain %q", td)
	}
	b, err := s.e.Bundle()
	if err != nil {
		s.e.served.WithLabelValues("error").Inc()
		s.e.log.Error("bundle endpoint: cannot serve the bundle", "error", err)
		return nil, err
	}
	s.e.served.WithLabelValues("ok").Inc()
	return b, nil
}

// certificate returns the serving certificate.
func (e *Endpoint) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if e.web != nil {
		return e.web.get()
	}
	return e.spiffeCertificate()
}

// spiffeCertificate returns the endpoint's X509-SVID, issued by the CA
// through its own issuance path, renewed at half its life and when the
// CA material changes.
func (e *Endpoint) spiffeCertificate() (*tls.Certificate, error) {
	a := e.cfg.Source.Authority()
	if a == nil {
		return nil, errors.New("federation: no CA material loaded")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.svid; c != nil && e.svidFor == a && time.Now().Before(backoff.RenewAt(c.Leaf.NotBefore, c.Leaf.NotAfter, 0.5, 0)) {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("federation: endpoint key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("federation: endpoint CSR: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("federation: endpoint CSR: %w", err)
	}
	svid, err := e.issuer.IssueParsed(context.Background(), csr, e.cfg.ID, endpointSVIDTTL)
	if err != nil {
		return nil, fmt.Errorf("federation: issuing the endpoint's SVID: %w", err)
	}
	certs, err := pemfile.ParseCertificates([]byte(strings.Join(svid.ChainPEM, "")))
	if err != nil {
		return nil, fmt.Errorf("federation: the endpoint's SVID chain: %w", err)
	}
	chain := [][]byte{certs[0].Raw}
	for _, c := range certs[1:] {
		if !pemfile.IsSelfSigned(c) { // the root is the peer's to hold, in our bundle
			chain = append(chain, c.Raw)
		}
	}
	e.svid = &tls.Certificate{Certificate: chain, PrivateKey: crypto.Signer(key), Leaf: certs[0]}
	e.svidFor = a
	return e.svid, nil
}

// webCert is an operator-provided certificate and key, read again when
// either file changes.
type webCert struct {
	certFile, keyFile string
	files             *filewatch.Watcher

	mu      sync.Mutex // guards the fields below
	cert    *tls.Certificate
	checked time.Time
}

// newWebCert reads the pair, or fails.
func newWebCert(certFile, keyFile string, log *slog.Logger) (*webCert, error) {
	w := &webCert{certFile: certFile, keyFile: keyFile, checked: time.Now()}
	stamp, _ := w.fileStamp()
	if err := w.load(); err != nil {
		return nil, err
	}
	var err error
	// get checks at most every webCertCheck, and never calls Run.
	w.files, err = filewatch.New(filewatch.Config{Path: certFile, Interval: time.Hour, Read: w.fileStamp,
		Load: func([]byte) error {
			err := w.load()
			if err == nil {
				log.Info("bundle endpoint: certificate reloaded", "file", certFile)
			}
			return err
		},
		Report: func(err error) {
			log.Error("bundle endpoint: the new certificate does not load; serving the last good one", "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("federation: bundle endpoint certificate: %w", err)
	}
	w.files.Seed(stamp)
	return w, nil
}

// fileStamp tells a change to either file by its modification time and
// size, without reading the key.
func (w *webCert) fileStamp() ([]byte, error) {
	var s []byte
	for _, f := range []string{w.certFile, w.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			s = fmt.Appendf(s, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return s, nil
}

// load reads the pair, or fails and keeps the last one.
func (w *webCert) load() error {
	c, err := tls.LoadX509KeyPair(w.certFile, w.keyFile)
	if err != nil {
		return fmt.Errorf("federation: bundle endpoint certificate %s, key %s: %w", w.certFile, w.keyFile, err)
	}
	w.cert = &c
	return nil
}

// get returns the pair, reading it again when the files changed; a new
// pair that does not load is logged once and the last good one served.
func (w *webCert) get() (*tls.Certificate, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.checked) >= webCertCheck {
		w.checked = time.Now()
		w.files.Check()
	}
	return w.cert, nil
}
