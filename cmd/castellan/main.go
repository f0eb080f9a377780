// Command castellan is Castellan's single binary: the CA server, the node
// agent, the authorization translator, the certificate inspector and the
// load generators, each a subcommand.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// command is one subcommand: it parses args and runs until ctx ends.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"ca", "run the certificate authority server", runCA},
		{"agent", "run the node agent (SDS, Workload API, files)", runAgent},
		{"authz", "translate and check AuthorizationPolicy and PeerAuthentication", runAuthz},
		{"cert", "inspect certificates", runCert},
		{"bench", "load generators (bench ca|sds|token)", runBench},
		{"demo", "run the CA and a workload on this machine, no cluster needed", runDemo},
		{"version", "print the version, VCS revision and Go version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return cliflag.ExitUsage
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return cliflag.ExitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		return cliflag.ExitCode(stderr, "castellan "+c.name, c.run(ctx, args[1:], stdout, stderr))
	}
	fmt.Fprintf(stderr, "castellan: unknown command %q\nRun 'castellan --help' for usage.\n", args[0])
	return cliflag.ExitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: castellan <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "castellan <command> --help" for a command's flags.

Flags are POSIX-style: --data-dir DIR or --data-dir=DIR, -o json. Commands
with structured output take -o/--output text|json|yaml; under -o json an
error is one JSON object on stderr: {"error": "...", "code": N}.

Environment:
  Every flag of every command is also a CASTELLAN_ variable: --data-dir is
  CASTELLAN_DATA_DIR. Standard variables are read for the flags they name:
  KUBECONFIG (--kubeconfig), VAULT_ADDR (--vault-addr), VAULT_CACERT
  (--vault-ca-cert), SPIFFE_ENDPOINT_SOCKET (authz serve
  --workload-api-socket). Precedence: the flag, then its CASTELLAN_
  variable, then the standard variable, then the default.`)
	fmt.Fprintln(w)
	fmt.Fprintln(w, exitStatusHelp)
}
