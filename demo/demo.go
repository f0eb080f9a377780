// Package demo runs Castellan's main job on one machine with no cluster:
// a CA with a self-signed root, a workload proven by an offline JWT, an
// SVID issued through the real gRPC API, and a node agent that serves the
// workload's SVID over Envoy's SDS and the SPIFFE Workload API.
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

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
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
	store, err := material.Open(ctx, material.Config{Dir: filepath.Join(cfg.DataDir, "ca"), TrustDomain: td, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srv, err := server.New(ctx, server.Config{
		Source:         store,
		Runners:        []func(context.Context) error{store.Run},
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
	defer func() { cancel(); _ = <-served }() // the demo's outcome is already decided
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

	// 5. A node agent: it makes its own key, gets the SVID over the same
	// API, and serves it over Envoy's SDS and the SPIFFE Workload API.
	return runAgent(ctx, cfg, out, srv.GRPCAddr(), filepath.Join(cfg.DataDir, "ca", "root-cert.pem"), token, td)
}

// runAgent starts an agent for the demo workload and fetches its SVID over
// SDS, as Envoy does, and over the Workload API, with go-spiffe's client.
func runAgent(ctx context.Context, cfg Config, out io.Writer, caAddr, rootFile, token string, td spiffeid.TrustDomain) error {
	dir := filepath.Join(cfg.DataDir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := pemfile.WriteFileAtomic(tokenFile, []byte(token), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	sdsSock, wlSock := filepath.Join(dir, "sds.sock"), filepath.Join(dir, "workload.sock")
	a, err := agent.New(agent.Config{
		CAAddr: caAddr, CAServerName: "localhost", RootCertFile: rootFile, TokenFile: tokenFile,
		SDSSocket: sdsSock, WorkloadAPISocket: wlSock, HTTPAddr: agent.Disabled,
		OutputDir: filepath.Join(dir, "certs"), Logger: cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	actx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- a.Run(actx) }()
	defer func() { cancel(); _ = <-ran }()
	fmt.Fprintf(out, "== Agent\n   SDS %s, Workload API %s, files %s\n\n", sdsSock, wlSock, filepath.Join(dir, "certs"))

	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	secrets, err := sdsclient.Fetch(fctx, sdsSock, "default", "ROOTCA")
	if err != nil {
		return fmt.Errorf("demo: SDS: %w", err)
	}
	chain, _, err := sdsclient.TLSCertificate(secrets["default"])
	if err != nil {
		return fmt.Errorf("demo: SDS default: %w", err)
	}
	roots, err := sdsclient.TrustedCA(secrets["ROOTCA"])
	if err != nil {
		return fmt.Errorf("demo: SDS ROOTCA: %w", err)
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		return fmt.Errorf("demo: the SVID from SDS does not verify: %w", err)
	}
	fmt.Fprintf(out, "== SVID over Envoy SDS (StreamSecrets: default + ROOTCA)\n   SPIFFE ID  %s\n   expires    %s\n   ROOTCA     %d root(s), x509svid.Verify: ok\n\n",
		id, chain[0].NotAfter.UTC().Format(time.RFC3339), len(roots))

	x509ctx, err := workloadapi.FetchX509Context(fctx, workloadapi.WithAddr("unix://"+wlSock))
	if err != nil {
		return fmt.Errorf("demo: Workload API: %w", err)
	}
	svid := x509ctx.DefaultSVID()
	bundle, err := x509ctx.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return fmt.Errorf("demo: Workload API bundle: %w", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		return fmt.Errorf("demo: the SVID from the Workload API does not verify: %w", err)
	}
	fmt.Fprintf(out, "== SVID over the SPIFFE Workload API (go-spiffe workloadapi client)\n   SPIFFE ID  %s\n   expires    %s\n   bundle     %d root(s), x509svid.Verify: ok\n\n",
		svid.ID, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339), len(bundle.X509Authorities()))
	return nil
}
