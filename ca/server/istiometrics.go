package server

import (
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Istio's CA metrics (istiod's security/pkg/server/ca/monitoring.go),
// exported under their names when Config.IstioMetrics is set, so that
// dashboards and alerts written for istiod's CA work unchanged. Istio's
// exporter adds no _total suffix to these counters.
const (
	istioCSRCount          = "citadel_server_csr_count"
	istioAuthnFailureCount = "citadel_server_authentication_failure_count"
	istioParsingErrCount   = "citadel_server_csr_parsing_err_count"
	istioIDExtractErrCount = "citadel_server_id_extraction_err_count"
	istioSignErrCount      = "citadel_server_csr_sign_err_count"
	istioSuccessCount      = "citadel_server_success_cert_issuance_count"
	istioRootExpiryTS      = "citadel_server_root_cert_expiry_timestamp"
	istioRootExpirySeconds = "citadel_server_root_cert_expiry_seconds"
	istioChainExpiryTS     = "citadel_server_cert_chain_expiry_timestamp"
	istioChainExpirySecs   = "citadel_server_cert_chain_expiry_seconds"
)

// Values of citadel_server_csr_sign_err_count's "error" label (Istio's
// caerror types).
const (
	istioCSRError     = "CSR_ERROR"
	istioTTLError     = "TTL_ERROR"
	istioCANotReady   = "CA_NOT_READY"
	istioCertGenError = "CERT_GEN_ERROR"
)

// IstioMetricNames are the names IstioMetrics adds, in the order of
// Istio's own list.
var IstioMetricNames = []string{
	istioCSRCount, istioAuthnFailureCount, istioParsingErrCount, istioIDExtractErrCount, istioSignErrCount,
	istioSuccessCount, istioRootExpiryTS, istioRootExpirySeconds, istioChainExpiryTS, istioChainExpirySecs,
}

// istioParsingReasons are the rejections Istio would count as a CSR it
// could not parse.
var istioParsingReasons = map[string]bool{
	string(ca.ReasonMalformedCSR):   true,
	string(ca.ReasonBadSignature):   true,
	string(ca.ReasonUnsupportedKey): true,
	string(reasonOversized):         true,
}

// istioCollector derives Istio's metrics from Castellan's at each scrape,
// so the two can never disagree: there is no second set of counters for
// the issuance path to keep in step.
type istioCollector struct {
	m   *metrics
	src ca.Source
	now func() time.Time

	csr, authn, parsing, idExtract, signErr, success *prometheus.Desc
	rootTS, rootSecs, chainTS, chainSecs             *prometheus.Desc
}

func newIstioCollector(m *metrics, src ca.Source) *istioCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help+" (Istio-compatible alias of Castellan's metrics.)", labels, nil)
	}
	return &istioCollector{
		m: m, src: src, now: time.Now,
		csr:       d(istioCSRCount, "The number of CSRs received by Citadel server."),
		authn:     d(istioAuthnFailureCount, "The number of authentication failures."),
		parsing:   d(istioParsingErrCount, "The number of errors occurred when parsing the CSR."),
		idExtract: d(istioIDExtractErrCount, "The number of errors occurred when extracting the ID from CSR."),
		signErr:   d(istioSignErrCount, "The number of errors occurred when signing the CSR.", "error"),
		success:   d(istioSuccessCount, "The number of certificates issuances that have succeeded."),
		rootTS:    d(istioRootExpiryTS, "The unix timestamp, in seconds, when the root cert will expire."),
		rootSecs:  d(istioRootExpirySeconds, "The time remaining, in seconds, before the root cert will expire."),
		chainTS:   d(istioChainExpiryTS, "The unix timestamp, in seconds, when the CA's cert chain will expire."),
		chainSecs: d(istioChainExpirySecs, "The time remaining, in seconds, before the CA's cert chain will expire."),
	}
}

// Describe implements prometheus.Collector.
func (c *istioCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.csr, c.authn, c.parsing, c.idExtract, c.signErr, c.success, c.rootTS, c.rootSecs, c.chainTS, c.chainSecs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *istioCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}

	// Istio counts a refused impersonation as an authentication failure.
	authFailures := sum(byLabel(c.m.authFailures, "reason"))
	for key, v := range byLabel(c.m.impersonation, "result") {
		if key == impersonationDenied {
			authFailures += v
		}
	}
	var parsing, idExtract, ttl, notReady float64
	for reason, v := range byLabel(c.m.rejected, "reason") {
		switch {
		case reason == string(reasonImpersonation):
			// counted above
		case reason == string(ca.ReasonInvalidTTL):
			ttl += v
		case reason == string(ca.ReasonCAUnavailable):
			notReady += v
		case istioParsingReasons[reason]:
			parsing += v
		default:
			// The CSR parsed but asks for what the caller may not have
			// (another identity, a forbidden SAN).
			idExtract += v
		}
	}
	counter(c.csr, value(c.m.received))
	counter(c.authn, authFailures)
	counter(c.parsing, parsing)
	counter(c.idExtract, idExtract)
	counter(c.signErr, parsing+idExtract, istioCSRError)
	counter(c.signErr, ttl, istioTTLError)
	counter(c.signErr, notReady, istioCANotReady)
	counter(c.signErr, 0, istioCertGenError)
	counter(c.success, value(c.m.issued))

	if a := c.src.Authority(); a != nil {
		now := c.now()
		root, chain := a.Root().NotAfter, a.NotAfter()
		gauge(c.rootTS, float64(root.Unix()))
		gauge(c.rootSecs, root.Sub(now).Seconds())
		gauge(c.chainTS, float64(chain.Unix()))
		gauge(c.chainSecs, chain.Sub(now).Seconds())
	}
}

// value reads a counter's current value.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// byLabel reads every series of a counter vector, keyed by one label.
func byLabel(c prometheus.Collector, label string) map[string]float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	out := map[string]float64{}
	for metric := range ch {
		var m dto.Metric
		if err := metric.Write(&m); err != nil {
			continue
		}
		key := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				key = l.GetValue()
			}
		}
		out[key] += m.GetCounter().GetValue()
	}
	return out
}

func sum(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}
