package main

import (
	"context"
	"flag"
	"io"

	"github.com/castellan-mesh/castellan/demo"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("castellan demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "", "keep the demo's CA material here (default: a temporary directory)")
	logLevel := fs.String("log-level", "warn", "log level of the demo's servers")
	if err := cliflag.Parse(fs, "CASTELLAN_DEMO", args, nil); err != nil {
		return usageError{Err: err}
	}
	log, err := cliflag.NewLogger(stderr, *logLevel)
	if err != nil {
		return usageError{Err: err}
	}
	return demo.Run(ctx, demo.Config{DataDir: *dataDir, Out: stdout, Logger: log})
}
