// Package agentcmd is the command line of Castellan's node agent: its
// flags, their CASTELLAN_ environment variables, and the process around an
// agent.Agent (logger, metrics registry, GC tuning, SIGHUP). It is shared by
// "castellan agent" and by the slim castellan-agent binary, which links
// nothing but the agent.
package agentcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// EnvPrefix is the prefix of the environment variables that set the flags:
// --ca-addr is also CASTELLAN_CA_ADDR.
const EnvPrefix = cliflag.EnvPrefix

// help is the agent's --help text besides its flags.
var help = cliflag.Help{Summary: `Run the node agent: keys made on the node, SVIDs from the CA renewed in the
background, served over Envoy SDS and the SPIFFE Workload API (one socket by
default) and optionally written to files. SIGHUP asks for a new SVID at once;
SIGINT and SIGTERM stop the agent.`}

// UsageError is a bad flag or argument; its ExitCode is 2.
type UsageError = cliflag.UsageError

// flags are the node agent's flags.
type flags struct {
	caAddr, caServerName, rootCert, tokenFile, spiffeID, keyType string
	federatedBundles                                             string
	sdsSocket, workloadSocket, socketMode, outputDir, httpAddr   string
	logLevel, logFormat                                          string
	attestation, nodeName, kubeconfig, procRoot, trustDomain     string
	pprof                                                        bool
	gcPercent, maxIdentities                                     int
	ttl, initialBackoff, maxBackoff, requestTimeout, rootPoll    time.Duration
	rotateFraction, rotateJitter                                 float64
	// outputLayout and dnsNames make a serving certificate, such as
	// istiod's (--output-layout istiod --dns-name ...).
	outputLayout string
	dnsNames     *cliflag.StringList
	// jwtBundleRefresh is how often the CA's JWT authorities are fetched.
	jwtBundleRefresh time.Duration
}

func (f *flags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.caAddr, "ca-addr", "castellan.castellan-system.svc:15012", "CA address (host:port) of the certificate service")
	fs.StringVar(&f.caServerName, "ca-server-name", "", "name checked in the CA's serving certificate (default: the host of --ca-addr)")
	fs.StringVar(&f.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "trusted roots (PEM): verify the CA and the SVIDs, and are served as the trust bundle; re-read when they change")
	fs.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/tokens/istio-token", "service-account token sent to the CA; re-read on every CA call")
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID to ask for in the CSR (default: none; the CA derives it from the token)")
	fs.StringVar(&f.keyType, "key-type", string(agent.KeyECDSAP256), "key generated for each SVID: ecdsa-p256, rsa-2048 or rsa-3072")
	fs.DurationVar(&f.ttl, "ttl", 0, "SVID lifetime asked of the CA (0: the CA's default)")
	fs.Float64Var(&f.rotateFraction, "rotate-fraction", 0.5, "renew an SVID after this fraction of its lifetime")
	fs.Float64Var(&f.rotateJitter, "rotate-jitter", 0.1, "move each renewal at random by up to ± half this fraction of the lifetime (0: none)")
	fs.DurationVar(&f.initialBackoff, "initial-backoff", time.Second, "first wait after a failed CA call; doubled on each failure")
	fs.DurationVar(&f.maxBackoff, "max-backoff", 30*time.Second, "longest wait between failed CA calls")
	fs.DurationVar(&f.requestTimeout, "request-timeout", 10*time.Second, "time limit of one CA call")
	fs.StringVar(&f.federatedBundles, "federated-bundles-file", "", "bundles of the federated trust domains, as the CA publishes them (default: federated-bundles.json beside --root-cert; \"-\": none); served in SDS and the Workload API, re-read when they change")
	fs.DurationVar(&f.rootPoll, "root-poll-interval", 5*time.Second, "how often --root-cert is checked for changes")
	fs.StringVar(&f.sdsSocket, "sds-socket", agent.DefaultSDSSocket, "Unix socket of the SDS server (\"-\" disables SDS)")
	fs.StringVar(&f.workloadSocket, "workload-api-socket", "", "Unix socket of the SPIFFE Workload API (default: the SDS socket; \"-\" disables it)")
	fs.StringVar(&f.socketMode, "socket-mode", "", "file mode of the sockets (octal); default 0600, or 0666 with --attestation=node, where every caller is attested and the pods' containers run as users of their own")
	fs.StringVar(&f.attestation, "attestation", string(agent.AttestationNone), "whom the agent serves: \"none\" serves the agent's own SVID to every caller (an agent beside one workload); \"node\" attests each caller to its pod on this node and serves it its service account's SVID, asked of the CA on its behalf (one agent per node)")
	fs.StringVar(&f.nodeName, "node-name", "", "this node's name (--attestation=node); usually from the downward API, spec.nodeName")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for the watch on this node's pods (--attestation=node; default: $KUBECONFIG, else in-cluster)")
	cliflag.StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	fs.StringVar(&f.procRoot, "proc-root", "/proc", "the host's /proc, where callers' processes are found (--attestation=node; the agent needs the host's pid namespace)")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "trust domain of the SPIFFE IDs asked for on behalf of workloads (--attestation=node)")
	fs.IntVar(&f.maxIdentities, "max-identities", agent.DefaultMaxIdentities, "most service accounts served at once (--attestation=node)")
	fs.DurationVar(&f.jwtBundleRefresh, "jwt-bundle-refresh", agent.DefaultJWTBundleRefresh, "how often the CA's JWT authorities are fetched for the Workload API's JWT bundle")
	fs.StringVar(&f.outputDir, "output-dir", "", "directory to write cert-chain.pem, key.pem and root-cert.pem into on every rotation; an expired SVID is removed from it (default: none)")
	fs.StringVar(&f.outputLayout, "output-layout", "istio", "file names in --output-dir: istio (cert-chain.pem, key.pem, root-cert.pem) or istiod (tls.crt, tls.key, ca.crt: mount the directory at istiod's /var/run/secrets/istiod/tls)")
	f.dnsNames = cliflag.NewStringList()
	fs.Var(f.dnsNames, "dns-name", "DNS name asked for beside the SPIFFE ID, for a serving certificate such as istiod's (repeatable; comma-separated in CASTELLAN_DNS_NAME); the CA grants only the names its --dns-san-allow lists for this service account; not with --attestation=node")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:15020", "listen address for /metrics, /healthz and /readyz (\"-\" disables it)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", cliflag.LogJSON, "log format: json or text")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on --http-addr")
	fs.IntVar(&f.gcPercent, "gc-percent", 25, "Go GC target (as GOGC) for the agent; a low value keeps it small while it pushes a rotation to many proxies (0: Go's default or $GOGC)")
}

// config turns the flags into an agent.Config.
func (f *flags) config() (agent.Config, error) {
	keyType, err := agent.ParseKeyType(f.keyType)
	if err != nil {
		return agent.Config{}, fmt.Errorf("--key-type: %w", err)
	}
	var id spiffeid.ID
	if f.spiffeID != "" {
		if id, err = spiffeid.FromString(f.spiffeID); err != nil {
			return agent.Config{}, fmt.Errorf("--spiffe-id %q: %w", f.spiffeID, err)
		}
	}
	attestation, err := agent.ParseAttestation(f.attestation)
	if err != nil {
		return agent.Config{}, fmt.Errorf("--attestation: %w", err)
	}
	node := attestation == agent.AttestationNode
	socketMode := f.socketMode
	if socketMode == "" {
		socketMode = "0600"
		if node {
			socketMode = "0666"
		}
	}
	mode, err := strconv.ParseUint(socketMode, 8, 32)
	switch {
	case err != nil || mode > 0o777:
		return agent.Config{}, fmt.Errorf("--socket-mode %q: want an octal file mode such as 0600", socketMode)
	case mode&0o007 != 0 && !node:
		return agent.Config{}, fmt.Errorf("--socket-mode %s lets any user on the machine connect and get the agent's identity; use 0600 or 0660, or --attestation=node", socketMode)
	case mode&0o600 != 0o600:
		return agent.Config{}, fmt.Errorf("--socket-mode %s: the owner needs read and write", socketMode)
	}
	layout, err := certdir.ParseLayout(f.outputLayout)
	if err != nil {
		return agent.Config{}, fmt.Errorf("--output-layout: %w", err)
	}
	if f.gcPercent < 0 {
		return agent.Config{}, fmt.Errorf("--gc-percent %d: want 0 (Go's default) or a positive percentage", f.gcPercent)
	}
	var td spiffeid.TrustDomain
	if node {
		switch {
		case f.nodeName == "":
			return agent.Config{}, errors.New("--attestation=node needs --node-name (from the downward API: spec.nodeName)")
		case f.maxIdentities <= 0:
			return agent.Config{}, fmt.Errorf("--max-identities %d: want a positive number", f.maxIdentities)
		}
		if td, err = spiffeid.TrustDomainFromString(f.trustDomain); err != nil {
			return agent.Config{}, fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
		}
	}
	jitter := f.rotateJitter
	if jitter == 0 {
		jitter = -1 // agent.Config: negative means none.
	}
	return agent.Config{
		CAAddr:               f.caAddr,
		CAServerName:         f.caServerName,
		RootCertFile:         f.rootCert,
		FederatedBundlesFile: f.federatedBundles,
		TokenFile:            f.tokenFile,
		SPIFFEID:             id,
		KeyType:              keyType,
		TTL:                  f.ttl,
		RotateFraction:       f.rotateFraction,
		RotateJitter:         jitter,
		InitialBackoff:       f.initialBackoff,
		MaxBackoff:           f.maxBackoff,
		RequestTimeout:       f.requestTimeout,
		RootPollInterval:     f.rootPoll,
		SDSSocket:            f.sdsSocket,
		WorkloadAPISocket:    f.workloadSocket,
		SocketMode:           os.FileMode(mode),
		OutputDir:            f.outputDir,
		OutputLayout:         layout,
		DNSNames:             f.dnsNames.Values(),
		HTTPAddr:             f.httpAddr,
		Pprof:                f.pprof,
		Attestation:          attestation,
		ProcRoot:             f.procRoot,
		TrustDomain:          td,
		MaxIdentities:        f.maxIdentities,
		JWTBundleRefresh:     f.jwtBundleRefresh,
	}, nil
}

// parse parses args into the agent's Config, its logger writing to
// stderr, and the GC percentage to set. name heads the usage printed on
// stdout for -h. lookup reads the environment (nil: os.LookupEnv).
func parse(name string, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) (cfg agent.Config, gcPercent int, err error) {
	cfg, gcPercent, _, err = parseNode(name, args, stdout, stderr, lookup)
	return cfg, gcPercent, err
}

// parseNode is parse that also returns what node attestation needs.
func parseNode(name string, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) (cfg agent.Config, gcPercent int, node nodeOptions, err error) {
	fs := cliflag.NewFlagSet(name, help, stdout, stderr)
	var f flags
	f.register(fs)
	defer func() { node = nodeOptions{nodeName: f.nodeName, kubeconfig: f.kubeconfig, procRoot: f.procRoot} }()
	if err := cliflag.Parse(fs, EnvPrefix, args, lookup); err != nil {
		return agent.Config{}, 0, nodeOptions{}, UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return agent.Config{}, 0, nodeOptions{}, UsageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := cliflag.NewLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return agent.Config{}, 0, nodeOptions{}, UsageError{Err: err}
	}
	if cfg, err = f.config(); err != nil {
		return agent.Config{}, 0, nodeOptions{}, UsageError{Err: err}
	}
	cfg.Logger = log
	return cfg, f.gcPercent, nodeOptions{}, nil
}

// Run parses args as the agent's flags (with their CASTELLAN_ environment
// variables) and runs the node agent until ctx ends. name heads the usage,
// such as "castellan agent"; -h prints it on stdout. Logs go to stderr
// (--log-format). SIGHUP asks for a new SVID at once.
//
// A bad flag or argument returns a UsageError; any other error comes from
// the agent itself.
func Run(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	cfg, gcPercent, node, err := parseNode(name, args, stdout, stderr, nil)
	if err != nil {
		return err
	}
	if !cfg.Pprof {
		// Heap profiling samples allocations into a table that grows
		// with every distinct stack; without --pprof nobody reads it.
		runtime.MemProfileRate = 0
	}
	if gcPercent > 0 && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	reg := promreg.NewRegistry()
	cfg.Registerer, cfg.Gatherer = reg, reg
	if cfg.Attestation == agent.AttestationNode {
		ctx2, cancel := context.WithCancel(ctx)
		defer cancel()
		ctx = ctx2
		if err := node.setUp(ctx, &cfg); err != nil {
			return err
		}
	}

	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	log := cfg.Logger
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("agent: SIGHUP: rotating now")
				a.RotateNow()
			}
		}
	}()
	return a.Run(ctx)
}
