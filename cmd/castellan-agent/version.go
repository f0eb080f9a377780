package main

import (
	"io"

	"github.com/castellan-mesh/castellan/internal/buildinfo"
)

// printVersion writes the build information to w and reports true when
// args ask for the version alone (--version or -version), which the agent
// answers before parsing any other flag.
func printVersion(args []string, w io.Writer) bool {
	if len(args) != 1 || (args[0] != "--version" && args[0] != "-version") {
		return false
	}
	_ = buildinfo.Read().Write(w, name)
	return true
}
