package agent

import (
	"context"
	"time"

	"github.com/castellan-mesh/castellan/agent/certdir"
)

// writeRetry is the wait before a failed write of OutputDir is tried again.
const writeRetry = 5 * time.Second

// writeFiles keeps OutputDir in step with the store: each new SVID or
// bundle is written as one version. A write that fails is counted, logged
// and tried again; the previous version stays in place meanwhile. An SVID
// that expires is not removed from disk: there is nothing newer to write.
func (a *Agent) writeFiles(ctx context.Context) error {
	var written string
	snap, changed := a.store.Load()
	for {
		var retry <-chan time.Time
		if snap.SVID != nil && snap.Bundle != nil {
			if v := snap.SVID.Version + "/" + snap.Bundle.Version; v != written {
				err := certdir.Write(a.cfg.OutputDir, certdir.Files{Chain: snap.SVID.ChainPEM, Key: snap.SVID.KeyPEM, Root: snap.Bundle.PEM})
				if err != nil {
					a.metrics.fileWrites.WithLabelValues("error").Inc()
					a.log.Error("agent: could not write output directory", "dir", a.cfg.OutputDir, "error", err, "retry_in", writeRetry)
					retry = time.After(writeRetry)
				} else {
					a.metrics.fileWrites.WithLabelValues("ok").Inc()
					written = v
					a.log.Debug("agent: output directory written", "dir", a.cfg.OutputDir)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-retry:
		case <-changed:
			snap, changed = a.store.Load()
		}
	}
}
