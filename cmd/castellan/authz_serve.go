package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/rbac"
	"github.com/castellan-mesh/castellan/authz/watch"
	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/opshttp"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// authzServeFlags configure "castellan authz serve", the policy server.
type authzServeFlags struct {
	xdsAddr, httpAddr          string
	certDir, workloadAPI       string
	certFile, keyFile, bundle  string
	trustDomain, rootNamespace string
	trustDomainAliases         *cliflag.StringList
	kubeconfig, namespace      string
	logLevel, logFormat        string
	maxStreams                 int
}

func (f *authzServeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.xdsAddr, "xds-addr", ":15010", "listen address of the ECDS service (gRPC over mutual TLS)")
	fs.StringVar(&f.httpAddr, "http-addr", ":15016", "listen address for /metrics, /healthz and /readyz")
	fs.StringVar(&f.workloadAPI, "workload-api-socket", "", "take the server certificate and the trust bundle from the agent's SPIFFE Workload API at this `ADDRESS` (unix:///path), instead of files (default: $SPIFFE_ENDPOINT_SOCKET, unless certificate files are named)")
	cliflag.StandardEnv(fs, "workload-api-socket", "SPIFFE_ENDPOINT_SOCKET")
	fs.StringVar(&f.certDir, "cert-dir", "", "directory with cert-chain.pem, key.pem and root-cert.pem, as the agent's --output-dir writes them (re-read on rotation)")
	fs.StringVar(&f.certFile, "cert", "", "server certificate chain (PEM); overrides --cert-dir")
	fs.StringVar(&f.keyFile, "key", "", "server private key (PEM); overrides --cert-dir")
	fs.StringVar(&f.bundle, "bundle", "", "trust bundle clients are verified against (PEM); overrides --cert-dir")
	fs.StringVar(&f.trustDomain, "trust-domain", rbac.DefaultTrustDomain, "the mesh's trust domain: of the proxies' identities and of policy principals")
	f.trustDomainAliases = cliflag.NewStringList()
	fs.Var(f.trustDomainAliases, "trust-domain-alias", "a trust domain treated as the same as --trust-domain in policies (repeatable)")
	fs.StringVar(&f.rootNamespace, "root-namespace", authz.DefaultRootNamespace, "namespace whose policies apply mesh-wide")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, else the in-cluster config)")
	cliflag.StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	fs.StringVar(&f.namespace, "namespace", "", "watch policies and pods of this namespace only (default all)")
	fs.IntVar(&f.maxStreams, "max-streams", 100000, "most xDS streams served at once")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", cliflag.LogJSON, "log format: json or text")
}

func (f *authzServeFlags) files() (cert, key, bundle string, err error) {
	pick := func(flagValue, name string) string {
		if flagValue != "" || f.certDir == "" {
			return flagValue
		}
		return filepath.Join(f.certDir, name)
	}
	cert, key, bundle = pick(f.certFile, certdir.ChainFile), pick(f.keyFile, certdir.KeyFile), pick(f.bundle, certdir.RootFile)
	if cert == "" || key == "" || bundle == "" {
		return "", "", "", errors.New("the server certificate is required: set --cert-dir, or --cert, --key and --bundle, or --workload-api-socket")
	}
	return cert, key, bundle, nil
}

func runAuthzServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cliflag.NewFlagSet("castellan authz serve", authzHelp["serve"], stdout, stderr)
	var f authzServeFlags
	f.register(fs)
	if err := parseAuthzFlags(fs, args); err != nil {
		return err
	}
	if f.maxStreams < 1 {
		return usageError{Err: fmt.Errorf("--max-streams %d: want at least 1", f.maxStreams)}
	}
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return usageError{Err: fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)}
	}
	log, err := cliflag.NewLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return usageError{Err: err}
	}
	if cliflag.FromStandardEnv(fs, "workload-api-socket") && (f.certDir != "" || f.certFile != "" || f.keyFile != "" || f.bundle != "") {
		// Certificate files named explicitly win over SPIFFE_ENDPOINT_SOCKET.
		f.workloadAPI = ""
	}
	var serverTLS *tls.Config
	if f.workloadAPI != "" {
		if f.certDir != "" || f.certFile != "" || f.keyFile != "" || f.bundle != "" {
			return usageError{Err: errors.New("--workload-api-socket excludes --cert-dir, --cert, --key and --bundle")}
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		source, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr(f.workloadAPI)))
		cancel()
		if err != nil {
			return fmt.Errorf("--workload-api-socket %s: %w", f.workloadAPI, err)
		}
		defer source.Close()
		serverTLS = xds.SourceTLSConfig(source, td)
	} else {
		certFile, keyFile, bundleFile, err := f.files()
		if err != nil {
			return usageError{Err: err}
		}
		creds, err := xds.NewFileCredentials(certFile, keyFile, bundleFile)
		if err != nil {
			return err
		}
		serverTLS = creds.TLSConfig()
	}
	cfg, err := kubeConfig(f.kubeconfig)
	if err != nil {
		return fmt.Errorf("authz serve needs a cluster (set --kubeconfig or run in a pod): %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	reg := promreg.NewRegistry()
	engineMetrics, err := authz.NewMetrics(reg)
	if err != nil {
		return err
	}
	xdsMetrics, err := xds.NewMetrics(reg)
	if err != nil {
		return err
	}
	engine, err := authz.New(authz.Config{
		RootNamespace: f.rootNamespace, TrustDomain: f.trustDomain, TrustDomainAliases: f.trustDomainAliases.Values(),
		Logger: log, Metrics: engineMetrics,
	})
	if err != nil {
		return err
	}
	policies, err := watch.New(watch.Config{Client: dyn, Namespace: f.namespace, Logger: log}, engine)
	if err != nil {
		return err
	}
	podWatch, err := xds.NewPodWatcher(kube, f.namespace, engine)
	if err != nil {
		return err
	}
	server, err := xds.New(xds.Config{Engine: engine, Pods: podWatch, TrustDomain: f.trustDomain, Logger: log, Metrics: xdsMetrics, MaxStreams: f.maxStreams})
	if err != nil {
		return err
	}
	g := grpc.NewServer(append(xds.GRPCServerOptions(),
		grpc.Creds(credentials.NewTLS(serverTLS)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)...)
	server.Register(g)
	lis, err := net.Listen("tcp", f.xdsAddr)
	if err != nil {
		return fmt.Errorf("--xds-addr: %w", err)
	}
	mux := opshttp.NewMux(opshttp.Config{Gatherer: reg, Ready: func() (bool, string) {
		if !policies.HasSynced() || !podWatch.HasSynced() {
			return false, "policies or pods not synced"
		}
		return true, "ok"
	}})
	hs := &http.Server{Addr: f.httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 32 << 10}
	hl, err := net.Listen("tcp", f.httpAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 5)
	go func() { errc <- policies.Run(ctx) }()
	go func() { errc <- podWatch.Run(ctx) }()
	go func() { errc <- server.Run(ctx) }()
	go func() { errc <- g.Serve(lis) }()
	go func() { errc <- hs.Serve(hl) }()
	log.Info("authz serve: serving ECDS", "xds_addr", lis.Addr().String(), "http_addr", hl.Addr().String(),
		"trust_domain", f.trustDomain, "namespace", f.namespace, "resources", xds.ResourceNames)
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
	}
	cancel()
	g.Stop()
	shut, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = hs.Shutdown(shut)
	return err
}
