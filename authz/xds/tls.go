package xds

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/internal/filewatch"
	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// maxPEMSize bounds the certificate, key and bundle files read.
const maxPEMSize = 1 << 20

// FileCredentials serves the server certificate and verifies clients
// against a trust bundle, all read from PEM files and read again when they
// change (the agent rewrites them on every rotation), at most once per
// second. A rewrite that does not load leaves the last good files in
// force.
type FileCredentials struct {
	certFile, keyFile, bundleFile string
	files                         *filewatch.Watcher

	mu         sync.Mutex // guards the fields below
	checked    time.Time
	checkEvery time.Duration
	cfg        *tls.Config
}

// NewFileCredentials reads the files once, failing if they are unusable.
func NewFileCredentials(certFile, keyFile, bundleFile string) (*FileCredentials, error) {
	f := &FileCredentials{certFile: certFile, keyFile: keyFile, bundleFile: bundleFile, checked: time.Now(), checkEvery: time.Second}
	stamp, err := f.fileStamp()
	if err != nil {
		return nil, err
	}
	if f.cfg, err = loadTLS(certFile, keyFile, bundleFile); err != nil {
		return nil, err
	}
	// current checks at most every checkEvery, and Run is never called.
	f.files, err = filewatch.New(filewatch.Config{Path: certFile, Interval: time.Hour, Read: f.fileStamp, Load: f.load})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	f.files.Seed(stamp)
	return f, nil
}

// TLSConfig returns the server's TLS configuration: TLS 1.3, client
// certificates required and verified against the bundle.
func (f *FileCredentials) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return f.current(), nil
		},
	}
}

func (f *FileCredentials) current() *tls.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) >= f.checkEvery {
		f.checked = time.Now()
		f.files.Check()
	}
	return f.cfg
}

// fileStamp tells a change to any of the files by its modification time
// and size, without reading the key.
func (f *FileCredentials) fileStamp() ([]byte, error) {
	var s []byte
	for _, name := range []string{f.certFile, f.keyFile, f.bundleFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return nil, fmt.Errorf("xds: %w", err)
		}
		s = fmt.Appendf(s, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}

// load reads the files again; the watcher calls it, from current, when
// their stamp changed.
func (f *FileCredentials) load([]byte) error {
	cfg, err := loadTLS(f.certFile, f.keyFile, f.bundleFile)
	if err != nil {
		return err
	}
	f.cfg = cfg
	return nil
}

func readPEM(name string) ([]byte, error) {
	b, err := smallfile.Read(name, maxPEMSize)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return b, nil
}

func loadTLS(certFile, keyFile, bundleFile string) (*tls.Config, error) {
	certPEM, err := readPEM(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readPEM(keyFile)
	if err != nil {
		return nil, err
	}
	bundlePEM, err := readPEM(bundleFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("xds: server certificate %s and key %s: %w", certFile, keyFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundlePEM) {
		return nil, errors.New("xds: no certificate in trust bundle " + bundleFile)
	}
	return ServerTLSConfig(cert, pool), nil
}

// ServerTLSConfig returns the TLS configuration of the server for a
// certificate and the bundle clients are verified against.
func ServerTLSConfig(cert tls.Certificate, bundle *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    bundle,
	}
}

// X509Source gives the current X509-SVID and trust bundles, as go-spiffe's
// workloadapi.X509Source does from the agent's socket.
type X509Source interface {
	x509svid.Source
	x509bundle.Source
}

// SourceTLSConfig returns the server's TLS configuration from src: its
// current SVID as the server certificate, and the bundle of td to verify
// clients against. Every handshake takes the source's current material,
// so a rotation applies to the next connection.
func SourceTLSConfig(src X509Source, td spiffeid.TrustDomain) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			svid, err := src.GetX509SVID()
			if err != nil {
				return nil, fmt.Errorf("xds: server SVID: %w", err)
			}
			bundle, err := src.GetX509BundleForTrustDomain(td)
			if err != nil {
				return nil, fmt.Errorf("xds: trust bundle of %s: %w", td, err)
			}
			cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
			for _, c := range svid.Certificates {
				cert.Certificate = append(cert.Certificate, c.Raw)
			}
			pool := x509.NewCertPool()
			for _, c := range bundle.X509Authorities() {
				pool.AddCert(c)
			}
			return ServerTLSConfig(cert, pool), nil
		},
	}
}
