package main

import (
	"context"
	"fmt"
	"io"

	"github.com/castellan-mesh/castellan/internal/buildinfo"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// runVersion prints the module version, VCS revision and Go version the
// binary was built with.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan version", cliflag.Help{Summary: "Print the module version, VCS revision and Go version of this binary."}, stdout, stderr)
	out := cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = out.Errors(err) }()
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("version takes no arguments, got %q", fs.Args())}
	}
	info := buildinfo.Read()
	return out.Write(stdout, versionJSON{info.Version, info.Revision, info.GoVersion}, func(w io.Writer) error {
		return info.Write(w, "castellan")
	})
}

// versionJSON is the output of "castellan version -o json|yaml".
type versionJSON struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	GoVersion string `json:"goVersion"`
}
