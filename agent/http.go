package agent

import (
	"fmt"
	"net/http"
	"time"

	"github.com/castellan-mesh/castellan/internal/opshttp"
)

func (a *Agent) httpHandler() http.Handler {
	// /metrics uncompressed: the page is a few kilobytes read over the
	// node's loopback, and a gzip writer would hold over half a megabyte.
	mux := opshttp.NewMux(opshttp.Config{Gatherer: a.cfg.Gatherer, Ready: a.Ready, DisableCompression: true})
	if a.cfg.Pprof {
		opshttp.HandlePprof(mux)
	}
	return mux
}

// Ready reports whether the agent has something to serve: a valid SVID
// and a trust bundle. The string says what is missing.
func (a *Agent) Ready() (bool, string) {
	snap, _ := a.store.Load()
	switch {
	case snap.Bundle == nil:
		return false, "no trust bundle loaded from " + a.cfg.RootCertFile
	case a.ids != nil && !podsSynced(a.cfg.Pods):
		return false, "node attestation: the pods of this node are not listed yet"
	case a.ids != nil:
		// A node agent obtains SVIDs as workloads ask: it is ready to
		// serve as soon as it can verify what the CA sends and knows the
		// node's pods.
		total, valid := a.ids.count()
		return true, fmt.Sprintf("node attestation: serving %d identities (%d with a valid SVID)", total, valid)
	case snap.SVID == nil:
		return false, "no valid SVID yet (see castellan_agent_ca_request_failures_total)"
	case a.cfg.OutputDir != "" && leafExpiry(a.cfg.OutputDir, a.cfg.OutputLayout).IsZero():
		// What reads the files (istiod, with --output-layout istiod) may
		// start only once they are there.
		return false, "no certificate written to " + a.cfg.OutputDir + " yet"
	}
	return true, fmt.Sprintf("serving %s until %s", snap.SVID.ID(), snap.SVID.NotAfter.Format(time.RFC3339))
}

// podsSynced reports whether pods has listed the node's pods, for a
// PodSet that says (an informer does); one that does not is taken as
// listed.
func podsSynced(pods PodSet) bool {
	if p, ok := pods.(interface{ Synced() bool }); ok {
		return p.Synced()
	}
	return true
}
