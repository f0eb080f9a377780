package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/castellan-mesh/castellan/demo"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cliflag.NewFlagSet("castellan demo", cliflag.Help{
		Summary: "Run the CA and a workload on this machine, with no cluster: the workload gets an\nSVID from the agent, and the demo exits 0 when the identity checks pass.",
	}, stdout, stderr)
	dataDir := fs.String("data-dir", "", "keep the demo's CA material here, created if missing (default: a temporary directory)")
	logLevel := fs.String("log-level", "warn", "log level of the demo's servers")
	logFormat := fs.String("log-format", cliflag.LogJSON, "log format of the demo's servers: json or text")
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := cliflag.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usageError{Err: err}
	}
	if *dataDir != "" {
		if err := os.MkdirAll(*dataDir, 0o700); err != nil {
			return fmt.Errorf("--data-dir: %w", err)
		}
	}
	return demo.Run(ctx, demo.Config{DataDir: *dataDir, Out: stdout, Logger: log})
}
