package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// agentFlags are the flags of "castellan agent".
type agentFlags struct {
	caAddr, caServerName, rootCert, tokenFile, spiffeID, keyType string
	sdsSocket, workloadSocket, socketMode, outputDir, httpAddr   string
	logLevel                                                     string
	pprof                                                        bool
	gcPercent                                                    int
	ttl, initialBackoff, maxBackoff, requestTimeout, rootPoll    time.Duration
	rotateFraction, rotateJitter                                 float64
}

func (f *agentFlags) register(fs *flag.FlagSet) {
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
	fs.DurationVar(&f.rootPoll, "root-poll-interval", 5*time.Second, "how often --root-cert is checked for changes")
	fs.StringVar(&f.sdsSocket, "sds-socket", agent.DefaultSDSSocket, "Unix socket of the SDS server (\"-\" disables SDS)")
	fs.StringVar(&f.workloadSocket, "workload-api-socket", "", "Unix socket of the SPIFFE Workload API (default: the SDS socket; \"-\" disables it)")
	fs.StringVar(&f.socketMode, "socket-mode", "0600", "file mode of the sockets (octal; never open to other users)")
	fs.StringVar(&f.outputDir, "output-dir", "", "directory to write cert-chain.pem, key.pem and root-cert.pem into on every rotation (default: none)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:15020", "listen address for /metrics, /healthz and /readyz (\"-\" disables it)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on --http-addr")
	fs.IntVar(&f.gcPercent, "gc-percent", 25, "Go GC target (as GOGC) for the agent; a low value keeps it small while it pushes a rotation to many proxies (0: Go's default or $GOGC)")
}

// config turns the flags into an agent.Config.
func (f *agentFlags) config() (agent.Config, error) {
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
	mode, err := strconv.ParseUint(f.socketMode, 8, 32)
	switch {
	case err != nil || mode > 0o777:
		return agent.Config{}, fmt.Errorf("--socket-mode %q: want an octal file mode such as 0600", f.socketMode)
	case mode&0o007 != 0:
		return agent.Config{}, fmt.Errorf("--socket-mode %s lets any user on the machine connect; use 0600 or 0660", f.socketMode)
	case mode&0o600 != 0o600:
		return agent.Config{}, fmt.Errorf("--socket-mode %s: the owner needs read and write", f.socketMode)
	}
	jitter := f.rotateJitter
	if jitter == 0 {
		jitter = -1 // agent.Config: negative means none.
	}
	return agent.Config{
		CAAddr:            f.caAddr,
		CAServerName:      f.caServerName,
		RootCertFile:      f.rootCert,
		TokenFile:         f.tokenFile,
		SPIFFEID:          id,
		KeyType:           keyType,
		TTL:               f.ttl,
		RotateFraction:    f.rotateFraction,
		RotateJitter:      jitter,
		InitialBackoff:    f.initialBackoff,
		MaxBackoff:        f.maxBackoff,
		RequestTimeout:    f.requestTimeout,
		RootPollInterval:  f.rootPoll,
		SDSSocket:         f.sdsSocket,
		WorkloadAPISocket: f.workloadSocket,
		SocketMode:        os.FileMode(mode),
		OutputDir:         f.outputDir,
		HTTPAddr:          f.httpAddr,
		Pprof:             f.pprof,
	}, nil
}

// runAgent runs the node agent until ctx ends. SIGHUP asks for a new SVID
// at once.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("castellan agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f agentFlags
	f.register(fs)
	if err := cliflag.Parse(fs, "CASTELLAN", args, nil); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return usageError{err}
	}
	cfg, err := f.config()
	if err != nil {
		return usageError{err}
	}
	if f.gcPercent > 0 && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(f.gcPercent)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Logger, cfg.Registerer, cfg.Gatherer = log, reg, reg

	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
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
