package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// certUsage is the usage of "castellan cert" without a subcommand.
const certUsage = `Usage:
  castellan cert inspect [FILE|-] [flags]

Run "castellan cert inspect --help" for the flags.
`

func runCert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, certUsage)
		return usageError{Err: errors.New("a subcommand is required: inspect")}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, certUsage)
		return nil
	}
	if args[0] != "inspect" {
		return usageError{Err: fmt.Errorf("unknown subcommand %q (want inspect)", args[0])}
	}
	return runCertInspect(ctx, args[1:], os.Stdin, stdout, stderr)
}

// certInspectFlags are the flags of "castellan cert inspect".
type certInspectFlags struct {
	secret, kubeconfig, kubeContext     string
	sds, workloadAPI                    string
	tlsAddr, clientCert, clientKey, sni string
	bundle, key                         string
	output                              *cliflag.Output
	short                               bool
	timeout                             time.Duration
}

func (f *certInspectFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.secret, "secret", "", "inspect the Kubernetes Secret `NS/NAME` (tls.crt/ca.crt/tls.key or Istio's cacerts keys)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for --secret (default $KUBECONFIG, then ~/.kube/config)")
	cliflag.StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	fs.StringVar(&f.kubeContext, "context", "", "kubeconfig context for --secret (default the current one)")
	fs.StringVar(&f.sds, "sds", "", "fetch the default and ROOTCA secrets from the SDS socket `unix:///path`, as Envoy does")
	fs.StringVar(&f.workloadAPI, "workload-api", "", "fetch the X509-SVID from the SPIFFE Workload API socket `unix:///path`")
	fs.StringVar(&f.tlsAddr, "tls", "", "inspect what the TLS server at `host:port` presents")
	fs.StringVar(&f.clientCert, "client-cert", "", "client certificate `FILE` to present with --tls (mTLS-only ports)")
	fs.StringVar(&f.clientKey, "client-key", "", "private key `FILE` of --client-cert")
	fs.StringVar(&f.sni, "server-name", "", "server name (SNI) to send with --tls (default the host)")
	fs.StringVar(&f.bundle, "bundle", "", "trust bundle `FILE|URL` to verify against (PEM, DER or SPIFFE bundle JSON); replaces the one the source delivers")
	fs.StringVar(&f.key, "key", "", "private key `FILE` that should match the leaf")
	f.output = cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	fs.BoolVar(&f.short, "short", false, "one line per certificate")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "time limit for fetching from a socket, URL or TLS endpoint")
}

// certInspectHelp is the --help of "castellan cert inspect".
var certInspectHelp = cliflag.Help{
	Usage: `castellan cert inspect [FILE|-] [--secret NS/NAME] [--sds unix:///path] [--workload-api unix:///path]
      [--tls host:port [--client-cert F --client-key F] [--server-name N]]
      [--bundle FILE|URL] [--key FILE] [-o text|json|yaml] [--short]`,
	Summary: `Inspect certificates from one source (a PEM or DER file, - for stdin, a
Kubernetes Secret, an SDS or Workload API socket, a TLS endpoint) and judge
them by profile: SPIFFE SVID, TLS certificate, CA, or trust bundle.`,
	Exit: `5  warnings
6  invalid`,
}

func runCertInspect(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan cert inspect", certInspectHelp, stdout, stderr)
	var f certInspectFlags
	f.register(fs)
	defer func() { err = f.output.Errors(err) }()
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	positional := fs.Args()
	if err := f.check(positional); err != nil {
		return usageError{Err: err}
	}
	// Only the command line is checked: KUBECONFIG or CASTELLAN_KUBECONFIG
	// in the environment is no mistake when the source is not a Secret.
	if f.secret == "" && (fs.Changed("kubeconfig") || fs.Changed("context")) {
		return usageError{Err: errors.New("--kubeconfig and --context apply only to --secret")}
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	in, err := f.load(ctx, positional, stdin)
	if err != nil {
		return err
	}
	if f.bundle != "" {
		certs, name, err := source.Bundle(ctx, f.bundle, nil)
		if err != nil {
			return err
		}
		in.Bundle, in.BundleSource = certs, name
	}
	if f.key != "" {
		k, err := source.Key(f.key)
		if err != nil {
			return err
		}
		in.PublicKey, in.KeySource = k.PublicKey, k.KeySource
	}

	report := inspect.Analyze(in, inspect.Options{})
	opts := inspect.TextOptions{Color: colorFor(stdout)}
	switch {
	case f.output.Format() == cliflag.OutputJSON:
		err = inspect.WriteJSON(stdout, report)
	case f.output.Format() == cliflag.OutputYAML:
		err = cliflag.WriteDocument(stdout, report, cliflag.OutputYAML)
	case f.short:
		err = inspect.WriteShort(stdout, report, opts)
	default:
		err = inspect.WriteText(stdout, report, opts)
	}
	if err != nil {
		return err
	}
	switch report.Status {
	case inspect.StatusInvalid:
		return status(exitCertInvalid, nil)
	case inspect.StatusWarning:
		return status(exitCertWarning, nil)
	}
	return nil
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
	case f.short && f.output.Format() != cliflag.OutputText:
		return fmt.Errorf("--short is a text format; it cannot be combined with -o %s", f.output.Format())
	case (f.clientCert == "") != (f.clientKey == ""):
		return errors.New("--client-cert and --client-key go together")
	case f.tlsAddr == "" && (f.clientCert != "" || f.sni != ""):
		return errors.New("--client-cert, --client-key and --server-name apply only to --tls")
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
