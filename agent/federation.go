package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/agent/svidstore"
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

// federatedWatcher loads the file of federated bundles and installs its
// content in every store whenever it changes. A missing file means no
// federated trust domain. A file that does not parse is logged once per
// distinct content, counted, and the last good set stays in force.
type federatedWatcher struct {
	a       *Agent
	path    string
	last    []byte
	loaded  bool
	lastErr string
}

// check loads the file once.
func (w *federatedWatcher) check() {
	a := w.a
	b, err := readFederatedFile(w.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if w.loaded && w.last != nil {
			// The CA stopped federating, or the mount went away: keep the
			// last good set, as for any unreadable file.
			w.fail(fmt.Errorf("agent: %s is gone; keeping the federated bundles", w.path))
		}
	case err != nil:
		w.fail(err)
	case !bytes.Equal(b, w.last) || !w.loaded:
		bundles, err := federated.Parse(b)
		if err != nil {
			w.fail(err)
			return
		}
		set, err := svidstore.NewFederated(bundles)
		if err != nil {
			w.fail(err)
			return
		}
		w.last, w.loaded, w.lastErr = b, true, ""
		a.metrics.bundleLoads.WithLabelValues("federated_ok").Inc()
		names := make([]string, 0, len(bundles))
		for _, fb := range bundles {
			names = append(names, fb.TrustDomain().Name())
		}
		a.log.Info("agent: federated bundles loaded", "file", w.path, "trust_domains", names, "version", set.Version)
		a.setFederated(set)
	}
}

func (w *federatedWatcher) fail(err error) {
	if msg := err.Error(); msg != w.lastErr {
		w.lastErr = msg
		w.a.metrics.bundleLoads.WithLabelValues("federated_error").Inc()
		w.a.log.Error("agent: could not load the federated bundles; keeping the current ones", "file", w.path, "error", err)
	}
}

// run checks the file every RootPollInterval until ctx ends.
func (w *federatedWatcher) run(ctx context.Context) error {
	t := time.NewTicker(w.a.cfg.RootPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.check()
		}
	}
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
	w := &federatedWatcher{a: a, path: path}
	w.check()
	return w.run
}

func readFederatedFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, federated.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("agent: could not read %s: %w", path, err)
	}
	if len(b) > federated.MaxDocumentSize {
		return nil, fmt.Errorf("agent: %s is over %d bytes", path, federated.MaxDocumentSize)
	}
	return b, nil
}
