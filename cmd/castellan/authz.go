package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/check"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

const authzUsageText = `Usage:
  castellan authz <subcommand> [flags]

  translate  print the Envoy RBAC filters for a workload
  check      decide a request by evaluating the generated Envoy RBAC filters
  mtls       print the effective mTLS mode per port for a workload
  serve      run the policy server: watch the cluster's policies and pods and
             serve each proxy its RBAC filters over ECDS (xDS)

Run "castellan authz <subcommand> --help" for its flags.
`

// authzHelp are the --help texts of the authz subcommands.
var authzHelp = map[string]cliflag.Help{
	"translate": {
		Summary: "Print the Envoy RBAC filters (HTTP and network) that Istio's policies give a\nworkload. --policies - reads the policies from stdin.",
		Exit:    "4  some policies were rejected; the others were used (an invalid policy is enforced fail-closed)",
	},
	"check": {
		Summary: "Decide a request (or, with --tcp, a connection) by evaluating the Envoy RBAC\nfilters generated for the workload. --policies - reads the policies from stdin.",
		Exit:    "3  the request is denied",
	},
	"mtls": {
		Summary: "Print the effective mTLS mode per port for a workload, from its\nPeerAuthentication policies. --policies - reads the policies from stdin.",
		Exit:    "4  some policies were rejected; the others were used",
	},
	"serve": {
		Summary: "Run the policy server: watch the cluster's policies and pods, and serve each\nproxy its RBAC filters over ECDS and its mTLS listener over LDS (xDS, mutual TLS).",
	},
}

func runAuthz(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, authzUsageText)
		return usageError{Err: errors.New("a subcommand is required: translate, check, mtls or serve")}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, authzUsageText)
		return nil
	}
	switch args[0] {
	case "translate":
		return runAuthzTranslate(ctx, args[1:], stdout, stderr)
	case "check":
		return runAuthzCheck(ctx, args[1:], stdout, stderr)
	case "mtls":
		return runAuthzMTLS(ctx, args[1:], stdout, stderr)
	case "serve":
		return runAuthzServe(ctx, args[1:], stdout, stderr)
	}
	return usageError{Err: fmt.Errorf("unknown subcommand %q (want translate, check, mtls or serve)", args[0])}
}

// authzCommon are the flags every authz subcommand shares: where the
// policies are, which workload, and the mesh settings.
type authzCommon struct {
	policies           *cliflag.StringList
	workload, labels   string
	services           *cliflag.StringList
	rootNamespace      string
	trustDomain        string
	trustDomainAliases *cliflag.StringList
	sdsCluster         string
	output             *cliflag.Output
	// stdin is read by --policies -.
	stdin io.Reader
}

// register registers the shared flags; formats are the -o values, the
// default first.
func (c *authzCommon) register(fs *pflag.FlagSet, formats ...string) {
	c.policies = cliflag.NewStringList()
	fs.Var(c.policies, "policies", "`PATH` of a YAML/JSON file or a directory of them, or - for stdin (repeatable)")
	fs.StringVar(&c.workload, "workload", "", "the workload, as `NAMESPACE/NAME`")
	fs.StringVar(&c.labels, "labels", "", "the workload's labels, as `k=v,k2=v2`")
	c.services = cliflag.NewStringList()
	fs.Var(c.services, "service", "a Service the workload serves as a waypoint, for targetRefs (repeatable)")
	fs.StringVar(&c.rootNamespace, "root-namespace", authz.DefaultRootNamespace, "namespace whose policies apply mesh-wide")
	fs.StringVar(&c.trustDomain, "trust-domain", rbac.DefaultTrustDomain, "the mesh's trust domain")
	c.trustDomainAliases = cliflag.NewStringList()
	fs.Var(c.trustDomainAliases, "trust-domain-alias", "a trust domain treated as the same as --trust-domain (repeatable)")
	fs.StringVar(&c.sdsCluster, "sds-cluster", mtls.DefaultSDSCluster, "Envoy cluster of the SDS server, in rendered TLS settings")
	c.output = cliflag.AddOutput(fs, formats[0], formats...)
	c.stdin = os.Stdin
}

// load reads the policies and computes the workload's configuration. Policy
// problems are printed on stderr and counted in the second result; they do
// not stop the good policies from being used. With notes, the translation
// notes (rules changed for TCP) are printed too.
func (c *authzCommon) load(stderr io.Writer, notes bool) (*authz.WorkloadConfig, int, error) {
	if len(c.policies.Values()) == 0 {
		return nil, 0, usageError{Err: errors.New("--policies is required")}
	}
	if c.workload == "" {
		return nil, 0, usageError{Err: errors.New("--workload is required")}
	}
	if n := slices.Index(c.policies.Values(), "-"); n >= 0 && slices.Index(c.policies.Values()[n+1:], "-") >= 0 {
		return nil, 0, usageError{Err: errors.New("--policies - (stdin) may be given once")}
	}
	w, err := policy.ParseWorkload(c.workload, c.labels)
	if err != nil {
		return nil, 0, usageError{Err: err}
	}
	w.Services = c.services.Values()
	e, err := authz.New(authz.Config{
		RootNamespace:      c.rootNamespace,
		TrustDomain:        c.trustDomain,
		TrustDomainAliases: c.trustDomainAliases.Values(),
		SDSCluster:         c.sdsCluster,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, 0, err
	}
	problems := 0
	report := func(err error) {
		for _, pe := range policy.Errors(err) {
			if errors.Is(pe, policy.ErrRequestAuthenticationUnsupported) {
				fmt.Fprintf(stderr, "notice: %v\n", pe)
				continue
			}
			fmt.Fprintf(stderr, "warning: %v\n", pe)
			problems++
		}
		if err != nil && len(policy.Errors(err)) == 0 {
			fmt.Fprintf(stderr, "warning: %v\n", err)
			problems++
		}
	}
	for _, p := range c.policies.Values() {
		rs, err := c.loadPolicies(p)
		if err != nil && rs == nil && len(policy.Errors(err)) == 0 {
			return nil, 0, err // the path itself is unreadable
		}
		report(err)
		for _, r := range rs {
			_, err := e.Apply(r)
			switch {
			case r.Invalid != nil:
				// Its problems were reported above; say how it is enforced.
				fmt.Fprintf(stderr, "fail-closed: %s\n", r.FailClosedNote())
			case err != nil:
				report(err)
			}
		}
	}
	cfg, err := e.Compute(w)
	if err != nil {
		return nil, problems, err
	}
	if notes {
		for _, n := range cfg.Notes {
			fmt.Fprintf(stderr, "note: %s\n", n)
		}
	}
	return cfg, problems, nil
}

// loadPolicies reads the policies at path, or on stdin for "-".
func (c *authzCommon) loadPolicies(path string) ([]*policy.Resource, error) {
	if path != "-" {
		return policy.Load(path)
	}
	return policy.Read(c.stdin, "stdin")
}

func parseAuthzFlags(fs *pflag.FlagSet, args []string) error {
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func problemsExit(n int) error {
	if n == 0 {
		return nil
	}
	return status(exitPolicyProblems, fmt.Errorf("%d policy problem(s); the other policies were used", n))
}

func runAuthzTranslate(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan authz translate", authzHelp["translate"], stdout, stderr)
	var c authzCommon
	c.register(fs, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = c.output.Errors(err) }()
	if err := parseAuthzFlags(fs, args); err != nil {
		return err
	}
	cfg, problems, err := c.load(stderr, true)
	if err != nil {
		return err
	}
	out := map[string]any{
		"httpFilters":    protoList(cfg.HTTPFilters),
		"networkFilters": protoList(cfg.NetworkFilters),
	}
	if err := cliflag.WriteDocument(stdout, out, c.output.Format()); err != nil {
		return err
	}
	return problemsExit(problems)
}

// protoList converts messages to values that marshal as Envoy's JSON.
func protoList[M proto.Message](ms []M) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(ms))
	for _, m := range ms {
		b, err := protojson.Marshal(m)
		if err != nil {
			// Every message here was generated and validated by us.
			panic(fmt.Sprintf("marshaling %T: %v", m, err))
		}
		out = append(out, b)
	}
	return out
}

// authzCheckFlags describe the request of "castellan authz check".
type authzCheckFlags struct {
	req                        check.Request
	headers, claims, audiences *cliflag.StringList
	tcp                        bool
}

func (f *authzCheckFlags) register(fs *pflag.FlagSet) {
	r := &f.req
	fs.StringVar(&r.Principal, "source-principal", "", "the peer's SPIFFE ID (`spiffe://...`); empty means a plaintext connection")
	fs.StringVar(&r.DNSSAN, "source-dns-san", "", "a DNS SAN of the peer certificate")
	fs.StringVar(&r.SourceIP, "source-ip", "10.0.0.1", "the peer address (source.ip, ipBlocks)")
	fs.StringVar(&r.RemoteIP, "remote-ip", "", "the original client address from X-Forwarded-For (remote.ip); default --source-ip")
	fs.StringVar(&r.DestinationIP, "destination-ip", "10.0.0.2", "the address the connection arrived on")
	fs.UintVar(&r.Port, "port", 8080, "the destination port")
	fs.StringVar(&r.Method, "method", "GET", "the HTTP method")
	fs.StringVar(&r.Path, "path", "/", "the HTTP path, query included")
	fs.StringVar(&r.Host, "host", "", "the HTTP host (:authority); default the workload name")
	fs.StringVar(&r.SNI, "sni", "", "the TLS server name")
	f.headers = cliflag.NewStringList()
	fs.Var(f.headers, "header", "a request header `name=value` (repeatable)")
	fs.StringVar(&r.RequestPrincipal, "request-principal", "", "the authenticated JWT principal, `iss/sub`")
	f.audiences = cliflag.NewStringList()
	fs.Var(f.audiences, "audience", "an audience of the authenticated JWT (repeatable)")
	fs.StringVar(&r.Presenter, "presenter", "", "the authorized presenter (azp) of the JWT")
	f.claims = cliflag.NewStringList()
	fs.Var(f.claims, "claim", "a JWT claim `name=value`; repeat for more values; a.b=v for a nested claim (repeatable)")
	fs.BoolVar(&f.tcp, "tcp", false, "check a TCP connection against the network filters instead of an HTTP request")
}

// request returns the request the flags describe.
func (f *authzCheckFlags) request() check.Request {
	r := f.req
	r.Headers, r.Audiences, r.Claims = f.headers.Values(), f.audiences.Values(), f.claims.Values()
	return r
}

func runAuthzCheck(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan authz check", authzHelp["check"], stdout, stderr)
	var (
		c authzCommon
		f authzCheckFlags
	)
	c.register(fs, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	f.register(fs)
	defer func() { err = c.output.Errors(err) }()
	if err := parseAuthzFlags(fs, args); err != nil {
		return err
	}
	cfg, _, err := c.load(stderr, f.tcp)
	if err != nil {
		return err
	}
	r, err := f.request().Envoy(cfg.Workload)
	if err != nil {
		return usageError{Err: err}
	}
	d, err := check.Decide(cfg, r, f.tcp)
	if err != nil {
		return err
	}
	if c.output.Format() == cliflag.OutputText {
		err = check.WriteText(stdout, d)
	} else {
		err = cliflag.WriteDocument(stdout, check.NewReport(d), c.output.Format())
	}
	if err != nil {
		return err
	}
	if !d.Allowed {
		return status(exitDenied, nil)
	}
	return nil
}

func runAuthzMTLS(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan authz mtls", authzHelp["mtls"], stdout, stderr)
	var c authzCommon
	var listener bool
	c.register(fs, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	fs.BoolVar(&listener, "listener", false, "print the Envoy listener settings (filter chains with the DownstreamTlsContext) instead; needs -o json or yaml")
	defer func() { err = c.output.Errors(err) }()
	if err := parseAuthzFlags(fs, args); err != nil {
		return err
	}
	if listener && c.output.Format() == cliflag.OutputText {
		return usageError{Err: errors.New("--listener needs -o json or -o yaml")}
	}
	cfg, problems, err := c.load(stderr, false)
	if err != nil {
		return err
	}
	res := cfg.MTLS
	source := func(s mtls.Setting) string {
		if s.Scope == mtls.ScopeDefault {
			return "default, no policy"
		}
		return fmt.Sprintf("%s policy %s/%s", s.Scope, s.Policy.Namespace, s.Policy.Name)
	}
	switch {
	case listener:
		out := map[string]any{
			"listenerFilters": protoList(cfg.Listener.ListenerFilters),
			"filterChains":    protoList(cfg.Listener.FilterChains),
		}
		err = cliflag.WriteDocument(stdout, out, c.output.Format())
	case c.output.Format() == cliflag.OutputText:
		fmt.Fprintf(stdout, "workload %s\n", cfg.Workload)
		fmt.Fprintf(stdout, "  all ports: %-10s (%s)\n", res.Workload.Mode, source(res.Workload))
		for _, p := range res.SortedPorts() {
			s := res.Ports[p]
			fmt.Fprintf(stdout, "  port %-5d: %-10s (%s)\n", p, s.Mode, source(s))
		}
	default:
		type setting struct {
			Mode   mtls.Mode `json:"mode"`
			Source string    `json:"source"`
		}
		ports := map[string]setting{}
		for p, s := range res.Ports {
			ports[strconv.FormatUint(uint64(p), 10)] = setting{s.Mode, source(s)}
		}
		err = cliflag.WriteDocument(stdout, map[string]any{
			"workload": cfg.Workload.String(),
			"mode":     setting{res.Workload.Mode, source(res.Workload)},
			"ports":    ports,
		}, c.output.Format())
	}
	if err != nil {
		return err
	}
	return problemsExit(problems)
}
