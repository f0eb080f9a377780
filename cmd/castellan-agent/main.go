// Command castellan-agent is Castellan's node agent on its own: the same
// command as "castellan agent", in a binary that links only the agent (no
// CA, policy translator or key-management backends, and of Kubernetes only
// the REST client and informer that node attestation's pod watch needs),
// so that the DaemonSet on every node maps a fraction of the pages.
//
//	castellan-agent --ca-addr castellan.castellan-system.svc:15012 \
//	    --sds-socket /var/run/secrets/workload-spiffe-uds/socket
//
// Every flag can also be set as CASTELLAN_<FLAG>, for example
// CASTELLAN_CA_ADDR. SIGHUP asks for a new SVID at once; SIGINT and
// SIGTERM stop the agent.
//
// The image builds it with -tags grpcnotrace, which leaves out gRPC's
// request tracing (never turned on by the agent) and the template packages
// it pulls in:
//
//	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -tags grpcnotrace ./cmd/castellan-agent
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/castellan-mesh/castellan/agent/agentcmd"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// name heads usage and error messages.
const name = "castellan-agent"

func main() {
	if printVersion(os.Args[1:], os.Stdout) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the agent and returns the process exit code: 0 when it stopped
// cleanly or printed its help (on stdout), 2 for a bad flag, 1 for any
// other failure.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cliflag.ExitCode(stderr, name, agentcmd.Run(ctx, name, args, stdout, stderr))
}
