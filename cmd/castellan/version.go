package main

import (
	"context"
	"fmt"
	"io"

	"github.com/castellan-mesh/castellan/internal/buildinfo"
)

// runVersion prints the module version, VCS revision and Go version the
// binary was built with.
func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usageError{Err: fmt.Errorf("version takes no arguments, got %q", args)}
	}
	return buildinfo.Read().Write(stdout, "castellan")
}
