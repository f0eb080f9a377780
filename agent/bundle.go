package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/castellan-mesh/castellan/agent/svidstore"
)

// bundleWatcher loads the root certificate file and installs its content
// in the store whenever it changes. A file that is missing or does not
// parse is logged once per distinct content and the last good bundle stays
// in force.
type bundleWatcher struct {
	a       *Agent
	last    []byte
	lastErr string
}

// check loads the file once.
func (w *bundleWatcher) check() {
	a := w.a
	b, err := readBundleFile(a.cfg.RootCertFile)
	switch {
	case err != nil:
		if msg := err.Error(); msg != w.lastErr {
			w.lastErr = msg
			a.metrics.bundleLoads.WithLabelValues("error").Inc()
			a.log.Error("agent: could not load trust bundle; keeping the current one", "file", a.cfg.RootCertFile, "error", err)
		}
	case !bytes.Equal(b, w.last):
		bundle, err := svidstore.ParseBundle(b)
		if err != nil {
			if msg := err.Error(); msg != w.lastErr {
				w.lastErr = msg
				a.metrics.bundleLoads.WithLabelValues("error").Inc()
				a.log.Error("agent: trust bundle file is not valid; keeping the current one", "file", a.cfg.RootCertFile, "error", err)
			}
			return
		}
		w.last, w.lastErr = b, ""
		a.metrics.bundleLoads.WithLabelValues("ok").Inc()
		a.log.Info("agent: trust bundle loaded", "file", a.cfg.RootCertFile, "roots", len(bundle.Certificates), "version", bundle.Version)
		a.setBundle(bundle)
	}
}

// run checks the file every RootPollInterval until ctx ends.
func (w *bundleWatcher) run(ctx context.Context) error {
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

func readBundleFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, svidstore.MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("agent: could not read %s: %w", path, err)
	}
	return b, nil
}
