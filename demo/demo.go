// Package demo runs Castellan's main job on one machine with no cluster:
// a CA with a self-signed root, a workload proven by an offline JWT, and an
// SVID issued through the real gRPC API.
package demo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Config configures a demo run.
type Config struct {
	// DataDir holds the CA material. Default: a temporary directory,
	// removed at the end.
	DataDir string
	// Out receives the report. Required.
	Out io.Writer
	// Logger receives the servers' logs. Default: discarded.
	Logger *slog.Logger
}

const (
	demoIssuer   = "https://demo.castellan.invalid"
	demoAudience = "istio-ca"
	demoNS       = "demo"
	demoSA       = "web"
)

// Run starts the CA, issues an SVID for a demo workload and prints it.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Out == nil {
		return errors.New("demo: no output")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "castellan-demo-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	out := cfg.Out
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// 1. The CA, with a self-signed root, trusting tokens from a local issuer.
	minter, err := authn.NewMinter(demoIssuer)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	jwksPath := filepath.Join(cfg.DataDir, "demo-jwks.json")
	if err := minter.WriteJWKS(jwksPath); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	jwt, err := authn.NewJWT(ctx, authn.JWTConfig{Issuer: demoIssuer, Audiences: []string{demoAudience}, JWKSFile: jwksPath})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	srv, err := server.New(ctx, server.Config{
		DataDir:        filepath.Join(cfg.DataDir, "ca"),
		GRPCAddr:       "127.0.0.1:0",
		HTTPAddr:       "127.0.0.1:0",
		TrustDomain:    td,
		ServerDNSNames: []string{"localhost"},
		Authenticator:  jwt,
		Logger:         cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	root := srv.Source().Authority().Root()
	fmt.Fprintf(out, "== CA\n   gRPC %s (TLS), HTTP %s, data dir %s\n   root %q, expires %s\n\n",
		srv.GRPCAddr(), srv.HTTPAddr(), filepath.Join(cfg.DataDir, "ca"), root.Subject.String(), root.NotAfter.UTC().Format(time.RFC3339))

	// 2. A workload token, minted locally and checked offline by the CA.
	token, err := minter.Mint(demoNS, demoSA, []string{demoAudience}, 10*time.Minute)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(out, "== Workload\n   service account %s/%s, token audience %q (%d bytes, not shown)\n\n", demoNS, demoSA, demoAudience, len(token))

	// 3. A CSR from a key made here, sent over the real gRPC API.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	want := spiffeid.RequireFromPath(td, "/ns/"+demoNS+"/sa/"+demoSA)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{want.URL()}}, key)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	client, err := caclient.New(caclient.Config{Addr: srv.GRPCAddr(), Roots: roots, ServerName: "localhost"})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer client.Close()
	chainPEM, err := client.CreateCertificate(ctx, token, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}), 0)
	if err != nil {
		return fmt.Errorf("demo: CreateCertificate: %w", err)
	}

	// 4. The SVID, checked as a SPIFFE peer would.
	var chain []*x509.Certificate
	for i, p := range chainPEM {
		c, err := pemfile.ParseCertificates([]byte(p))
		if err != nil {
			return fmt.Errorf("demo: chain element %d: %w", i, err)
		}
		chain = append(chain, c...)
	}
	id, _, err := x509svid.Verify(chain[:len(chain)-1], x509bundle.FromX509Authorities(td, []*x509.Certificate{root}))
	if err != nil {
		return fmt.Errorf("demo: the issued SVID does not verify: %w", err)
	}
	leaf := chain[0]
	fmt.Fprintf(out, "== SVID (issued over IstioCertificateService/CreateCertificate)\n")
	fmt.Fprintf(out, "   SPIFFE ID  %s\n", id)
	fmt.Fprintf(out, "   valid      %s to %s (%s)\n", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Second))
	fmt.Fprintf(out, "   serial     %x\n", leaf.SerialNumber)
	fmt.Fprintf(out, "   verified   x509svid.Verify against the CA's bundle: ok\n")
	fmt.Fprintf(out, "   chain:\n")
	for i, c := range chain {
		name := c.Subject.String()
		if len(c.URIs) > 0 && !c.IsCA {
			name = c.URIs[0].String()
		}
		fmt.Fprintf(out, "     [%d] %-45s issuer %q, expires %s\n", i, name, c.Issuer.String(), c.NotAfter.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(out)
	return nil
}
