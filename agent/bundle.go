package agent

import (
	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/filewatch"
)

// newBundleWatcher returns the watcher of the root certificate file: it
// installs the file's content in the store whenever it changes. A file
// that is missing or does not parse is logged once per distinct error and
// the last good bundle stays in force.
func (a *Agent) newBundleWatcher() (*filewatch.Watcher, error) {
	path := a.cfg.RootCertFile
	return filewatch.New(filewatch.Config{
		Path:     path,
		MaxSize:  svidstore.MaxBundleSize,
		Interval: a.cfg.RootPollInterval,
		Load: func(b []byte) error {
			bundle, err := svidstore.ParseBundle(b)
			if err != nil {
				return err
			}
			a.metrics.bundleLoads.WithLabelValues("ok").Inc()
			a.log.Info("agent: trust bundle loaded", "file", path, "roots", len(bundle.Certificates), "version", bundle.Version)
			a.setBundle(bundle)
			return nil
		},
		Report: func(err error) {
			a.metrics.bundleLoads.WithLabelValues("error").Inc()
			a.log.Error("agent: could not load trust bundle; keeping the current one", "file", path, "error", err)
		},
	})
}
