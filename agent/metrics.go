package agent

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// The reasons a CA request fails, as the reason label of
// castellan_agent_ca_request_failures_total.
const (
	reasonToken           = "token_unreadable"
	reasonNoBundle        = "no_trust_bundle"
	reasonKey             = "key_generation"
	reasonUnavailable     = "unavailable"
	reasonDeadline        = "deadline_exceeded"
	reasonUnauthenticated = "unauthenticated"
	reasonDenied          = "permission_denied"
	reasonInvalid         = "invalid_argument"
	reasonExhausted       = "resource_exhausted"
	reasonBadResponse     = "bad_response"
	reasonOther           = "other"
)

var failureReasons = []string{
	reasonToken, reasonNoBundle, reasonKey, reasonUnavailable, reasonDeadline, reasonUnauthenticated,
	reasonDenied, reasonInvalid, reasonExhausted, reasonBadResponse, reasonOther,
}

type metrics struct {
	rotations     prometheus.Counter
	failures      *prometheus.CounterVec
	lastUpdate    prometheus.Gauge
	caLatency     prometheus.Histogram
	bundleLoads   *prometheus.CounterVec
	fileWrites    *prometheus.CounterVec
	consecutive   prometheus.Gauge
	expirySeconds prometheus.GaugeFunc
	identities    prometheus.GaugeFunc
	withdrawn     prometheus.Counter
	refused       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, store *svidstore.Store, soonestExpiry func() (time.Time, bool), identities func() int) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		rotations: f.Counter("castellan_agent_rotations_total", "SVIDs obtained from the CA and installed, the first one included."),
		failures:  f.CounterVec("castellan_agent_ca_request_failures_total", "Failed attempts to obtain an SVID, by reason.", "reason"),
		lastUpdate: f.Gauge("castellan_agent_svid_last_rotation_timestamp_seconds",
			"When the current SVID was installed, in Unix seconds."),
		caLatency: f.Histogram("castellan_agent_ca_request_duration_seconds",
			"Duration of CreateCertificate calls to the CA, successful or not.", prometheus.ExponentialBuckets(0.001, 2, 15)),
		bundleLoads: f.CounterVec("castellan_agent_trust_bundle_loads_total",
			"Loads of the root certificate file that found new content, by result (ok or error).", "result"),
		fileWrites: f.CounterVec("castellan_agent_output_writes_total", "Writes of the output directory, by result (ok or error).", "result"),
		consecutive: f.Gauge("castellan_agent_ca_consecutive_failures",
			"Failed attempts to obtain an SVID since the last success; 0 when the CA is reachable."),
		expirySeconds: f.GaugeFunc("castellan_agent_svid_expiry_seconds", "Seconds until the current SVID expires; 0 when there is no valid SVID.",
			func() float64 {
				t, ok := soonestExpiry()
				if !ok {
					return 0
				}
				return max(0, time.Until(t).Seconds())
			}),
		identities: f.GaugeFunc("castellan_agent_identities",
			"Identities the agent serves now: one per service account in use on the node with node attestation, else 1 once its SVID is issued.",
			func() float64 { return float64(identities()) }),
		withdrawn: f.Counter("castellan_agent_identities_withdrawn_total",
			"SVIDs withdrawn (node attestation) because no running pod of their service account was left on the node."),
		refused: f.CounterVec("castellan_agent_callers_refused_total",
			"Calls on the agent's sockets refused an SVID (node attestation), by reason: an attestation failure, no_running_pod, identity_cap or agent_not_running.", "reason"),
	}
	f.Register(bundleRoots{store})
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("agent: could not register metrics: %w", err)
	}
	for _, r := range attest.Reasons {
		m.refused.WithLabelValues(string(r))
	}
	for _, r := range []string{refusedNoRunningPod, refusedIdentityCap} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range failureReasons {
		m.failures.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.bundleLoads.WithLabelValues(r)
		m.fileWrites.WithLabelValues(r)
	}
	return m, nil
}

// bundleRoots exports the roots of the agent's trust bundle, one series a
// root, so that a fleet-wide query shows when a root prepared by a
// rotation has reached every agent:
//
//	count by (serial) (castellan_agent_trust_bundle_root_expiry_timestamp_seconds)
type bundleRoots struct{ store *svidstore.Store }

var bundleRootDesc = prometheus.NewDesc("castellan_agent_trust_bundle_root_expiry_timestamp_seconds",
	"Expiry of each root in the agent's trust bundle, by serial number (hex), as a Unix timestamp.",
	[]string{"serial"}, nil)

func (b bundleRoots) Describe(ch chan<- *prometheus.Desc) { ch <- bundleRootDesc }

func (b bundleRoots) Collect(ch chan<- prometheus.Metric) {
	snap, _ := b.store.Load()
	if snap.Bundle == nil {
		return
	}
	seen := map[string]bool{}
	for _, c := range snap.Bundle.Certificates {
		serial := c.SerialNumber.Text(16)
		if seen[serial] {
			continue
		}
		seen[serial] = true
		ch <- prometheus.MustNewConstMetric(bundleRootDesc, prometheus.GaugeValue, float64(c.NotAfter.Unix()), serial)
	}
}
