package main

import (
	"context"
	"io"

	"github.com/castellan-mesh/castellan/agent/agentcmd"
)

// runAgent runs the node agent until ctx ends; see package agentcmd. The
// slim castellan-agent binary runs the same command. It writes nothing to
// stdout but its help.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return agentcmd.Run(ctx, "castellan agent", args, stdout, stderr)
}
