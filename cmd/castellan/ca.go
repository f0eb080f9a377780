package main

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/federation"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/promreg"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// caFlags are the flags of "castellan ca".
type caFlags struct {
	dataDir, grpcAddr, httpAddr, trustDomain, kubeconfig string
	jwtIssuer, jwksFile, logLevel, logFormat             string
	audiences, dnsNames                                  *cliflag.StringList
	defaultTTL, maxTTL, authCacheTTL                     time.Duration
	rootTTL, rootRotateBefore, rootPropagation           time.Duration
	tokenReview, pprof                                   bool
	gcPercent                                            int
	// istioMetrics also exports istiod's citadel_server_* metrics.
	istioMetrics bool
	// maxConnAge and maxConnAgeGrace bound a connection's life, so that
	// clients rebalance over replicas.
	maxConnAge, maxConnAgeGrace time.Duration
	// dnsSANAllow are the --dns-san-allow entries (ca.ParseDNSProfile).
	dnsSANAllow []string

	kms      kmsFlags
	jwt      jwtFlags
	kube     kubeFlags
	nodeAuth nodeAuthFlags
	auth     authFlags
	clusters clusterFlags
	fed      federationFlags
}

// caDeps are what the pluggable parts of "castellan ca" share.
type caDeps struct {
	log         *slog.Logger
	reg         prometheus.Registerer
	trustDomain spiffeid.TrustDomain
	dataDir     string
	kubeconfig  string
	// rootTTL and rootRotateBefore are the lifetime of a new self-signed
	// root and the time left at which it is rotated (0: no rotation).
	rootTTL, rootRotateBefore time.Duration
	// policy holds the waits between root rotation phases.
	policy rotation.Policy
	// rotation rotates the root of the CA material, once a mode's source
	// has been made.
	rotation rotation.Rotator
	// runners are background jobs started with the server.
	runners []func(context.Context) error
	// pods is the shared pod index (see podIndex), nil until asked for.
	pods *nodeauth.PodIndex
	// federated, when --federate-with is given, keeps the bundles of the
	// foreign trust domains; the trust ConfigMap publishes them too.
	federated *federation.Federator
	// remoteCluster is the ID of the remote cluster these deps are for
	// (--remote-cluster), empty for the CA's own cluster.
	remoteCluster string
}

// kubeClient returns a client for the configured cluster.
func (d *caDeps) kubeClient() (kubernetes.Interface, error) {
	cfg, err := kubeConfig(d.kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (f *caFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dataDir, "data-dir", "/var/lib/castellan", "directory holding the CA material (a self-signed root is created here on first start, or Istio's cacerts layout is used)")
	fs.StringVar(&f.grpcAddr, "grpc-addr", ":15012", "listen address of the certificate service (gRPC over TLS)")
	fs.StringVar(&f.httpAddr, "http-addr", ":15014", "listen address for /metrics, /healthz, /readyz, /bundle and /bundle.spiffe")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of issued SVIDs")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for TokenReview and the watches (default: $KUBECONFIG, else the in-cluster config)")
	cliflag.StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	fs.BoolVar(&f.tokenReview, "token-review", true, "authenticate Kubernetes service-account tokens with TokenReview")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "issuer of JWTs checked offline (with --jwks-file, or by OIDC discovery when it is an https URL)")
	fs.StringVar(&f.jwksFile, "jwks-file", "", "JWKS file with the keys of --jwt-issuer")
	f.audiences = cliflag.NewStringList("istio-ca")
	fs.Var(f.audiences, "token-audience", "accepted token audience (repeatable)")
	f.dnsNames = cliflag.NewStringList("castellan", "castellan.castellan-system.svc", "localhost")
	fs.Var(f.dnsNames, "server-dns-name", "DNS name in the CA's serving certificate (repeatable)")
	fs.DurationVar(&f.defaultTTL, "default-ttl", time.Hour, "SVID lifetime when the request names none")
	fs.DurationVar(&f.maxTTL, "max-ttl", 24*time.Hour, "longest SVID lifetime granted")
	fs.DurationVar(&f.authCacheTTL, "auth-cache-ttl", 5*time.Minute, "longest time a successful token check is reused (never past the token's exp)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", cliflag.LogJSON, "log format: json or text")
	fs.IntVar(&f.gcPercent, "gc-percent", defaultCAGCPercent, "Go garbage collector target percentage (as GOGC, which wins when set): the CA's live heap is small, so a higher target spends less CPU per SVID on collection for a few tens of MiB")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on --pprof-addr (a loopback address; never on --http-addr)")
	fs.DurationVar(&f.rootTTL, "root-ttl", 10*365*24*time.Hour, "lifetime of a new self-signed root")
	fs.DurationVar(&f.rootRotateBefore, "root-rotate-before", 365*24*time.Hour, "rotate a self-signed root automatically when less than this is left (0 disables)")
	fs.DurationVar(&f.rootPropagation, "root-propagation-delay", time.Hour, "time a new root sits in the trust bundle before it signs")
	fs.Func("dns-san-allow", "namespace/serviceaccount=name[,name...]: DNS names that service account may have in its certificate, e.g. istio-system/istiod=istiod.istio-system.svc (repeatable; entries separated by ';' in CASTELLAN_DNS_SAN_ALLOW); every other DNS SAN is refused", func(v string) error {
		f.dnsSANAllow = append(f.dnsSANAllow, v)
		return nil
	})
	f.kms.register(fs)
	f.jwt.register(fs)
	f.kube.register(fs)
	f.nodeAuth.register(fs)
	f.auth.register(fs)
	f.clusters.register(fs)
	f.fed.register(fs)
	fs.BoolVar(&f.istioMetrics, "istio-compatible-metrics", false, "also export istiod's CA metrics (citadel_server_*), derived from Castellan's, for Istio's dashboards and alerts")
	fs.DurationVar(&f.maxConnAge, "max-connection-age", 30*time.Minute, "close a connection to the certificate service after this long (gracefully, +/-10% jitter) so that clients reconnect and spread over replicas, as istiod's keepaliveMaxServerConnectionAge")
	fs.DurationVar(&f.maxConnAgeGrace, "max-connection-age-grace", 10*time.Second, "time calls in flight have to finish once --max-connection-age has passed")
}

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "rotate" {
		return runCARotate(ctx, args[1:], stdout, stderr)
	}
	fs := cliflag.NewFlagSet("castellan ca", caHelp, stdout, stderr)
	var f caFlags
	f.register(fs)
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q (subcommand: rotate)", fs.Arg(0))}
	}
	log, err := cliflag.NewLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return usageError{Err: err}
	}
	// Every flag is checked before anything is created or written.
	if err := f.validate(); err != nil {
		return err
	}
	setGCPercent(f.gcPercent)
	if !f.pprof {
		// Heap profiling samples an allocation every 512 KiB and records
		// its stack, about 1% of the CPU per SVID; without --pprof
		// nobody reads it.
		runtime.MemProfileRate = 0
	}
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return usageError{Err: fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)}
	}
	dnsProfile, err := ca.ParseDNSProfile(f.dnsSANAllow...)
	if err != nil {
		return usageError{Err: fmt.Errorf("--dns-san-allow: %w", err)}
	}
	if dnsProfile.Len() > 0 {
		log.Info("DNS SAN profile", "allow", dnsProfile.String())
	}
	reg := promreg.NewRegistry()
	deps := &caDeps{log: log, reg: reg, trustDomain: td, dataDir: f.dataDir, kubeconfig: f.kubeconfig,
		rootTTL: f.rootTTL, rootRotateBefore: f.rootRotateBefore,
		policy: rotation.Policy{PropagationDelay: f.rootPropagation, MaxTTL: f.maxTTL}}
	if f.maxConnAge < time.Second || f.maxConnAgeGrace < time.Second {
		return usageError{Err: fmt.Errorf("--max-connection-age (%s) and --max-connection-age-grace (%s) must be at least 1s", f.maxConnAge, f.maxConnAgeGrace)}
	}
	auth, err := f.clusterAuthenticator(ctx, deps)
	if err != nil {
		return err
	}
	limits := f.auth.limits()
	limits.MaxConnectionAge, limits.MaxConnectionAgeGrace = f.maxConnAge, f.maxConnAgeGrace
	pprofAddr := ""
	if f.pprof {
		pprofAddr = f.auth.pprofAddr
	}
	signer, err := f.kms.signer(ctx, deps)
	if err != nil {
		return err
	}
	src, err := f.kms.source(ctx, deps, signer)
	if err != nil {
		return err
	}
	if err := f.fed.prepare(deps); err != nil {
		return err
	}
	switch {
	case src != nil && f.kube.material != materialDir:
		return usageError{Err: fmt.Errorf("--material=%s and --upstream both supply the CA material; choose one", f.kube.material)}
	case src == nil:
		if src, err = f.kube.source(ctx, deps, signer, f.kms.rootKeys()); err != nil {
			return err
		}
	}
	impersonation, err := f.nodeAuth.authorizer(deps)
	if err != nil {
		return err
	}
	jwtKeys, err := f.jwt.keySet(ctx, &f.kms, &f.kube, deps, src)
	if err != nil {
		return err
	}
	if src == nil {
		if src, err = dataDirSource(ctx, deps, signer, f.kms.rootKeys()); err != nil {
			return err
		}
	}
	srv, err := server.New(ctx, server.Config{
		JWT:              jwtKeys,
		JWTSVIDTTL:       f.jwt.ttl,
		Source:           src,
		Rotation:         deps.rotation,
		Runners:          deps.runners,
		GRPCAddr:         f.grpcAddr,
		HTTPAddr:         f.httpAddr,
		TrustDomain:      td,
		ServerDNSNames:   f.dnsNames.Values(),
		Authenticator:    auth,
		DefaultTTL:       f.defaultTTL,
		MaxTTL:           f.maxTTL,
		Logger:           log,
		Registerer:       reg,
		Gatherer:         reg,
		PprofAddr:        pprofAddr,
		Limits:           limits,
		IstioMetrics:     f.istioMetrics,
		Impersonation:    impersonation,
		DNSProfile:       dnsProfile,
		RootRotateBefore: deps.rootRotateBefore,
	})
	if err != nil {
		return err
	}
	fedJobs, err := f.fed.start(deps, &f.kube, srv.Source(), jwtKeys)
	if err != nil {
		return err
	}
	return serveWith(ctx, srv.Serve, fedJobs...)
}

// dataDirSource opens the CA material in --data-dir: a self-signed root
// (its key in signer, or in the key store keys), created on first start,
// or Istio's cacerts. The store's reload goes in d.runners.
func dataDirSource(ctx context.Context, d *caDeps, signer crypto.Signer, keys rotation.KeyStore) (ca.Source, error) {
	store, err := material.Open(ctx, material.Config{
		Dir: d.dataDir, TrustDomain: d.trustDomain, RootTTL: d.rootTTL, Signer: signer, Keys: keys, Logger: d.log,
	})
	if err != nil {
		return nil, err
	}
	d.runners = append(d.runners, store.Run)
	d.rotation = store.Rotation(d.policy)
	return store, nil
}

// kubeConfig loads path, or the in-cluster config when path is empty.
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", path)
}

// usageError is a bad flag or argument: exit code 2.
type usageError = cliflag.UsageError

// caHelp is the --help of "castellan ca".
var caHelp = cliflag.Help{
	Usage: "castellan ca [flags]\n  castellan ca rotate prepare|activate|retire|status [flags]",
	Summary: `Run the certificate authority: it checks each caller's token, signs its CSR
into an X.509 SVID, and serves the trust bundle. "castellan ca rotate STEP
--help" describes the root rotation steps.`,
}

// validate checks the flags of "castellan ca" that can be checked without
// a cluster or a key store, so that a bad combination fails before any key
// or file is created.
func (f *caFlags) validate() error {
	if err := f.jwt.validate(); err != nil {
		return err
	}
	if _, err := f.fed.relationships(spiffeid.TrustDomain{}); err != nil {
		return err
	}
	if err := f.kms.validate(); err != nil {
		return err
	}
	switch f.kube.material {
	case materialDir:
	case materialKubernetes:
		if f.kms.upstream != "" {
			return usageError{Err: fmt.Errorf("--material=%s and --upstream both supply the CA material; choose one", f.kube.material)}
		}
		if f.rootRotateBefore > 0 && f.rootRotateBefore >= f.rootTTL {
			// Every root the leader makes would be due at once, forever.
			return usageError{Err: fmt.Errorf("--root-rotate-before %v is not shorter than --root-ttl %v: every new root would be rotated at once", f.rootRotateBefore, f.rootTTL)}
		}
	default:
		return usageError{Err: fmt.Errorf("--material %q: want %s or %s", f.kube.material, materialDir, materialKubernetes)}
	}
	for _, v := range f.nodeAuth.agents.Values() {
		if _, err := nodeauth.ParseServiceAccount(v); err != nil {
			return usageError{Err: fmt.Errorf("--node-agent-service-account: %w", err)}
		}
	}
	return nil
}
