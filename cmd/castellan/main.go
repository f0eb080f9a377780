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
		{"bench", "load generators (bench ca)", runBench},
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
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		return cliflag.ExitCode(stderr, "castellan "+c.name, c.run(ctx, args[1:], stdout, stderr))
	}
	fmt.Fprintf(stderr, "castellan: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: castellan <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every flag can also be set as CASTELLAN_<FLAG>, for example CASTELLAN_DATA_DIR.")
}
