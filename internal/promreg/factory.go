package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Factory makes a component's collectors and registers each one as it is
// made, as promauto.With does, except that a failed registration is kept
// for Err instead of panicking. A component defines each metric in one
// line and checks Err once:
//
//	f := promreg.With(reg)
//	m := &metrics{
//		issued: f.Counter("castellan_ca_certificates_issued_total", "Certificates issued."),
//		failed: f.CounterVec("castellan_ca_failures_total", "Failures, by reason.", "reason"),
//	}
//	if err := f.Err(); err != nil {
//		return nil, fmt.Errorf("ca: could not register metrics: %w", err)
//	}
//
// A Factory over a nil Registerer registers nothing: the collectors still
// count, and nothing scrapes them. A Factory is not safe for concurrent
// use.
type Factory struct {
	reg    prometheus.Registerer
	shared bool
	errs   []error
}

// With returns a Factory that registers on reg.
func With(reg prometheus.Registerer) *Factory { return &Factory{reg: reg} }

// WithShared returns a Factory that registers on reg the collectors
// several instances share, as Shared does: a collector identical to one
// already registered is no error, and the Factory returns the one
// registered.
func WithShared(reg prometheus.Registerer) *Factory { return &Factory{reg: reg, shared: true} }

// Register registers cs, collectors made elsewhere (a custom collector, a
// GaugeFunc over a component's state).
func (f *Factory) Register(cs ...prometheus.Collector) {
	if err := Register(f.reg, cs...); err != nil {
		f.errs = append(f.errs, err)
	}
}

// Err returns every registration failure so far, joined, or nil.
func (f *Factory) Err() error { return errors.Join(f.errs...) }

// register registers c on f and returns it, or, for a Factory of shared
// collectors, the identical one registered before.
func register[C prometheus.Collector](f *Factory, c C) C {
	if !f.shared {
		f.Register(c)
		return c
	}
	got, err := Shared(f.reg, c)
	if err != nil {
		f.errs = append(f.errs, err)
		return c
	}
	return got
}

// Counter returns a registered counter.
func (f *Factory) Counter(name, help string) prometheus.Counter {
	return register(f, prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help}))
}

// CounterVec returns a registered counter with labels.
func (f *Factory) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return register(f, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
}

// Gauge returns a registered gauge.
func (f *Factory) Gauge(name, help string) prometheus.Gauge {
	return register(f, prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help}))
}

// GaugeVec returns a registered gauge with labels.
func (f *Factory) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return register(f, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels))
}

// GaugeFunc returns a registered gauge whose value is value's result at
// each scrape.
func (f *Factory) GaugeFunc(name, help string, value func() float64) prometheus.GaugeFunc {
	return register(f, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, value))
}

// Histogram returns a registered histogram with buckets (nil:
// prometheus.DefBuckets).
func (f *Factory) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return register(f, prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}))
}

// HistogramVec returns a registered histogram with buckets (nil:
// prometheus.DefBuckets) and labels.
func (f *Factory) HistogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return register(f, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels))
}
