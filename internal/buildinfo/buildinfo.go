// Package buildinfo says which build of Castellan is running: the module
// version, the VCS revision and the Go version, as the Go toolchain stamped
// them into the binary, for "castellan version", "castellan-agent
// --version" and the castellan_build_info metric.
package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// unknown stands for a field the binary carries no value for (a test
// binary, or a build outside a VCS checkout).
const unknown = "unknown"

// Info describes one build. Fields the toolchain did not record are
// "unknown", never empty, so that a metric label is always set.
type Info struct {
	// Version is the main module's version: a tag such as v1.2.0, a
	// pseudo-version, or "(devel)" for a build from a work tree.
	Version string
	// Revision is the VCS commit the binary was built from, with a
	// "-dirty" suffix when the work tree had uncommitted changes.
	Revision string
	// GoVersion is the toolchain that built the binary, such as go1.26.8.
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: unknown, Revision: unknown, GoVersion: runtime.Version()}
	}
	return fromBuildInfo(bi)
}

// fromBuildInfo extracts Info from the toolchain's record.
func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, Revision: unknown, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = unknown
	}
	if info.GoVersion == "" {
		info.GoVersion = unknown
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if s.Value != "" {
				info.Revision = s.Value
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && info.Revision != unknown {
		info.Revision += "-dirty"
	}
	return info
}

// Write prints the build information as "name version ..." lines, for a
// command's version output.
func (i Info) Write(w io.Writer, name string) error {
	_, err := fmt.Fprintf(w, "%s\n  version:  %s\n  revision: %s\n  go:       %s\n", name, i.Version, i.Revision, i.GoVersion)
	return err
}

// NewCollector returns the castellan_build_info gauge: always 1, with the
// build's version, revision and Go version as labels, so that dashboards
// can tell which build each process runs.
func NewCollector() prometheus.Collector {
	return newCollector(Read())
}

func newCollector(i Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "castellan_build_info",
		Help: "Build information of the running binary; the value is always 1.",
		ConstLabels: prometheus.Labels{
			"version":   i.Version,
			"revision":  i.Revision,
			"goversion": i.GoVersion,
		},
	})
	g.Set(1)
	return g
}
