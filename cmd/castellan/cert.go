package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// Exit codes of "castellan cert inspect".
const (
	certExitValid   = 0
	certExitWarning = 1
	certExitInvalid = 2
	certExitUsage   = 3
)

// certExit carries the exit code of "castellan cert"; an empty message
// prints nothing.
type certExit struct {
	code int
	err  error
}

func (e certExit) Error() string {
	if e.err == nil || errors.Is(e.err, flag.ErrHelp) {
		return ""
	}
	return e.err.Error()
}

func (e certExit) Unwrap() error { return e.err }

func (e certExit) ExitCode() int { return e.code }

func certUsage(err error) error { return certExit{code: certExitUsage, err: err} }

func runCert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "usage: castellan cert inspect [FILE|-] [flags]   (castellan cert inspect -h for the flags)")
		if len(args) == 0 {
			return certUsage(nil)
		}
		return nil
	}
	if args[0] != "inspect" {
		return certUsage(fmt.Errorf("unknown subcommand %q (want inspect)", args[0]))
	}
	return runCertInspect(ctx, args[1:], os.Stdin, stdout, stderr)
}

// certInspectFlags are the flags of "castellan cert inspect".
type certInspectFlags struct {
	secret, kubeconfig, kubeContext     string
	sds, workloadAPI                    string
	tlsAddr, clientCert, clientKey, sni string
	bundle, key, format                 string
	short                               bool
	timeout                             time.Duration
}

func (f *certInspectFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.secret, "secret", "", "inspect the Kubernetes Secret `NS/NAME` (tls.crt/ca.crt/tls.key or Istio's cacerts keys)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for --secret (default $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&f.kubeContext, "context", "", "kubeconfig context for --secret (default the current one)")
	fs.StringVar(&f.sds, "sds", "", "fetch the default and ROOTCA secrets from the SDS socket `unix:///path`, as Envoy does")
	fs.StringVar(&f.workloadAPI, "workload-api", "", "fetch the X509-SVID from the SPIFFE Workload API socket `unix:///path`")
	fs.StringVar(&f.tlsAddr, "tls", "", "inspect what the TLS server at `host:port` presents")
	fs.StringVar(&f.clientCert, "client-cert", "", "client certificate `FILE` to present with --tls (mTLS-only ports)")
	fs.StringVar(&f.clientKey, "client-key", "", "private key `FILE` of --client-cert")
	fs.StringVar(&f.sni, "server-name", "", "server name (SNI) to send with --tls (default the host)")
	fs.StringVar(&f.bundle, "bundle", "", "trust bundle `FILE|URL` to verify against (PEM, DER or SPIFFE bundle JSON); replaces the one the source delivers")
	fs.StringVar(&f.key, "key", "", "private key `FILE` that should match the leaf")
	fs.StringVar(&f.format, "format", "text", "output format: text or json")
	fs.BoolVar(&f.short, "short", false, "one line per certificate")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "time limit for fetching from a socket, URL or TLS endpoint")
}

func runCertInspect(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("castellan cert inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f certInspectFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: castellan cert inspect [FILE|-] [--secret NS/NAME] [--sds unix:///path] [--workload-api unix:///path]")
		fmt.Fprintln(fs.Output(), "         [--tls host:port [--client-cert F --client-key F] [--server-name N]]")
		fmt.Fprintln(fs.Output(), "         [--bundle FILE|URL] [--key FILE] [--format text|json] [--short]")
		fmt.Fprintln(fs.Output())
		fmt.Fprintln(fs.Output(), "Exit status: 0 valid, 1 warning, 2 invalid, 3 usage or I/O error.")
		fmt.Fprintln(fs.Output())
		fs.PrintDefaults()
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return certUsage(err)
	}
	if err := f.check(positional); err != nil {
		return certUsage(err)
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	in, err := f.load(ctx, positional, stdin)
	if err != nil {
		return certExit{code: certExitUsage, err: err}
	}
	if f.bundle != "" {
		certs, name, err := source.Bundle(ctx, f.bundle, nil)
		if err != nil {
			return certExit{code: certExitUsage, err: err}
		}
		in.Bundle, in.BundleSource = certs, name
	}
	if f.key != "" {
		k, err := source.Key(f.key)
		if err != nil {
			return certExit{code: certExitUsage, err: err}
		}
		in.PublicKey, in.KeySource = k.PublicKey, k.KeySource
	}

	report := inspect.Analyze(in, inspect.Options{})
	opts := inspect.TextOptions{Color: colorFor(stdout)}
	switch {
	case f.format == "json":
		err = inspect.WriteJSON(stdout, report)
	case f.short:
		err = inspect.WriteShort(stdout, report, opts)
	default:
		err = inspect.WriteText(stdout, report, opts)
	}
	if err != nil {
		return certExit{code: certExitUsage, err: err}
	}
	switch report.Status {
	case inspect.StatusInvalid:
		return certExit{code: certExitInvalid}
	case inspect.StatusWarning:
		return certExit{code: certExitWarning}
	}
	return nil
}

// parseInterspersed parses flags that may come before or after the
// positional arguments ("inspect cert.pem --format json"), then applies the
// CASTELLAN_* environment to the flags not given. It returns the positional
// arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// "--" ends the flags: everything after it is positional.
		if len(args)-len(rest) > 0 && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	if err := cliflag.Parse(fs, "CASTELLAN", []string{}, nil); err != nil {
		return nil, err
	}
	return positional, nil
}

// check rejects contradictory flags before anything is read.
func (f *certInspectFlags) check(positional []string) error {
	var sources []string
	if len(positional) > 1 {
		return fmt.Errorf("one FILE at most, got %d: %s", len(positional), strings.Join(positional, " "))
	}
	if len(positional) == 1 {
		sources = append(sources, "FILE")
	}
	for _, s := range []struct{ name, value string }{
		{"--secret", f.secret}, {"--sds", f.sds}, {"--workload-api", f.workloadAPI}, {"--tls", f.tlsAddr},
	} {
		if s.value != "" {
			sources = append(sources, s.name)
		}
	}
	switch {
	case len(sources) == 0:
		return errors.New("nothing to inspect: give a FILE (- for stdin), --secret, --sds, --workload-api or --tls")
	case len(sources) > 1:
		return fmt.Errorf("choose one source, not %s", strings.Join(sources, " and "))
	case f.format != "text" && f.format != "json":
		return fmt.Errorf("--format %q: want text or json", f.format)
	case f.short && f.format == "json":
		return errors.New("--short is a text format; it cannot be combined with --format json")
	case (f.clientCert == "") != (f.clientKey == ""):
		return errors.New("--client-cert and --client-key go together")
	case f.tlsAddr == "" && (f.clientCert != "" || f.sni != ""):
		return errors.New("--client-cert, --client-key and --server-name apply only to --tls")
	case f.secret == "" && (f.kubeconfig != "" || f.kubeContext != ""):
		return errors.New("--kubeconfig and --context apply only to --secret")
	case f.timeout <= 0:
		return errors.New("--timeout must be positive")
	}
	if f.secret != "" {
		ns, name, ok := strings.Cut(f.secret, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("--secret %q: want NAMESPACE/NAME", f.secret)
		}
	}
	for _, s := range []struct{ name, value string }{{"--sds", f.sds}, {"--workload-api", f.workloadAPI}} {
		if s.value != "" && !strings.HasPrefix(s.value, "unix://") {
			return fmt.Errorf("%s %q: want unix:///path/to/socket", s.name, s.value)
		}
	}
	return nil
}

// load reads the chosen source.
func (f *certInspectFlags) load(ctx context.Context, positional []string, stdin io.Reader) (inspect.Input, error) {
	switch {
	case len(positional) == 1 && positional[0] == "-":
		return source.Reader(stdin, "stdin")
	case len(positional) == 1:
		return source.File(positional[0])
	case f.secret != "":
		ns, name, _ := strings.Cut(f.secret, "/")
		secrets, _, err := source.Kubeconfig(f.kubeconfig, f.kubeContext)
		if err != nil {
			return inspect.Input{}, err
		}
		return source.Secret(ctx, secrets, ns, name)
	case f.sds != "":
		return source.SDS(ctx, f.sds)
	case f.workloadAPI != "":
		return source.WorkloadAPI(ctx, f.workloadAPI)
	default:
		cfg := source.TLSConfig{ServerName: f.sni}
		if f.clientCert != "" {
			pair, err := tls.LoadX509KeyPair(f.clientCert, f.clientKey)
			if err != nil {
				return inspect.Input{}, fmt.Errorf("loading --client-cert/--client-key: %w", err)
			}
			cfg.ClientCertificate = pair
		}
		return source.TLS(ctx, f.tlsAddr, cfg)
	}
}

// colorFor reports whether w is a terminal that wants colour: a TTY, with
// NO_COLOR unset and TERM not "dumb".
func colorFor(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false
	}
	if _, no := os.LookupEnv("NO_COLOR"); no {
		return false
	}
	return os.Getenv("TERM") != "dumb"
}
