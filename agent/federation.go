package agent

import (
	"context"
	"path/filepath"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/filewatch"
	"github.com/castellan-mesh/castellan/trust/federated"
)

// federatedBundlesFile returns the file of federated bundles the agent
// reads: Config.FederatedBundlesFile, by default federated-bundles.json
// beside the root certificate file (where the CA's data directory and the
// trust ConfigMap put it), or "" when it is Disabled.
func (c *Config) federatedBundlesFile() string {
	switch c.FederatedBundlesFile {
	case Disabled:
		return ""
	case "":
		return filepath.Join(filepath.Dir(c.RootCertFile), federated.FileName)
	}
	return c.FederatedBundlesFile
}

// setFederated installs a new set of federated bundles for every identity
// served.
func (a *Agent) setFederated(f *svidstore.Federated) {
	a.store.SetFederated(f)
	if a.ids != nil {
		a.ids.setFederated(f)
	}
}

// startFederated loads the federated bundles once and returns the job
// that keeps them current, or nil when they are disabled.
func (a *Agent) startFederated() func(context.Context) error {
	path := a.cfg.federatedBundlesFile()
	if path == "" {
		return nil
	}
	w, err := filewatch.New(filewatch.Config{
		Path:     path,
		MaxSize:  federated.MaxDocumentSize,
		Interval: a.cfg.RootPollInterval,
		// A missing file means no federated trust domain.
		MayBeMissing: true,
		Load: func(b []byte) error {
			bundles, err := federated.Parse(b)
			if err != nil {
				return err
			}
			set, err := svidstore.NewFederated(bundles)
			if err != nil {
				return err
			}
			a.metrics.bundleLoads.WithLabelValues("federated_ok").Inc()
			names := make([]string, 0, len(bundles))
			for _, fb := range bundles {
				names = append(names, fb.TrustDomain().Name())
			}
			a.log.Info("agent: federated bundles loaded", "file", path, "trust_domains", names, "version", set.Version)
			a.setFederated(set)
			return nil
		},
		Report: func(err error) {
			a.metrics.bundleLoads.WithLabelValues("federated_error").Inc()
			a.log.Error("agent: could not load the federated bundles; keeping the current ones", "file", path, "error", err)
		},
	})
	if err != nil {
		// Not reached: the path is set, the size limit is a constant and
		// the poll interval has a default.
		a.log.Error("agent: federated bundles are not watched", "error", err)
		return nil
	}
	w.Check()
	return w.Run
}
