package agent

import (
	"context"
	"time"

	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// writeRetry is the wait before a failed write of OutputDir is tried again.
const writeRetry = 5 * time.Second

// writeFiles keeps OutputDir in step with the store: each new SVID or
// bundle is written as one version. A write that fails is counted, logged
// and tried again; the previous version stays in place meanwhile.
//
// An SVID that expires with no successor is taken out of OutputDir: a
// version with root-cert.pem alone replaces it, so that a workload reading
// the files finds no certificate rather than an expired one. An SVID left
// in OutputDir by an earlier run stays until the first new one, or is
// taken out the same way once it expires, if that comes first.
func (a *Agent) writeFiles(ctx context.Context) error {
	var (
		written     string
		stale       bool             // an SVID left by an earlier run has expired
		leftExpires <-chan time.Time // when it expires
	)
	if exp := leafExpiry(a.cfg.OutputDir, a.cfg.OutputLayout); !exp.IsZero() {
		leftExpires = time.After(time.Until(exp))
	}
	snap, changed := a.store.Load()
	for {
		var retry <-chan time.Time
		if snap.Bundle != nil && (snap.SVID != nil || written != "" || stale) {
			files := certdir.Files{Root: snap.Bundle.PEM}
			v := "none/" + snap.Bundle.Version
			if snap.SVID != nil {
				files.Chain, files.Key = snap.SVID.ChainPEM, snap.SVID.KeyPEM
				v = snap.SVID.Version + "/" + snap.Bundle.Version
			}
			if v != written {
				if err := certdir.WriteLayout(a.cfg.OutputDir, a.cfg.OutputLayout, files); err != nil {
					a.metrics.fileWrites.WithLabelValues("error").Inc()
					a.log.Error("agent: could not write output directory", "dir", a.cfg.OutputDir, "error", err, "retry_in", writeRetry)
					retry = time.After(writeRetry)
				} else {
					a.metrics.fileWrites.WithLabelValues("ok").Inc()
					written = v
					if files.HasCertificate() {
						a.log.Debug("agent: output directory written", "dir", a.cfg.OutputDir)
					} else {
						a.log.Warn("agent: no valid SVID; certificate and key removed from the output directory until the next one", "dir", a.cfg.OutputDir)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-retry:
		case <-leftExpires:
			stale, leftExpires = true, nil
		case <-changed:
			snap, changed = a.store.Load()
		}
	}
}

// leafExpiry returns the NotAfter of the first certificate of the chain
// in dir (laid out as l says), or the zero time if dir holds none.
func leafExpiry(dir string, l certdir.Layout) time.Time {
	f, err := certdir.ReadLayout(dir, l)
	if err != nil || !f.HasCertificate() {
		return time.Time{}
	}
	certs, err := pemfile.ParseCertificates(f.Chain)
	if err != nil {
		return time.Time{}
	}
	return certs[0].NotAfter
}
