package promreg_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

func TestFactory(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	f := promreg.With(reg)
	f.Counter("a_total", "a").Inc()
	f.CounterVec("b_total", "b", "reason").WithLabelValues("x").Inc()
	f.Gauge("c", "c").Set(1)
	f.GaugeVec("d", "d", "api").WithLabelValues("sotw").Set(2)
	f.GaugeFunc("e", "e", func() float64 { return 3 })
	f.Histogram("f_seconds", "f", []float64{1, 2}).Observe(1)
	f.HistogramVec("g_seconds", "g", nil, "code").WithLabelValues("OK").Observe(1)
	f.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "h_total", Help: "h"}))
	if err := f.Err(); err != nil {
		t.Fatalf("Err: %v", err)
	}
	if got := testutil.CollectAndCount(reg); got != 8 {
		t.Fatalf("registry holds %d metrics, want 8", got)
	}
}

func TestFactoryClash(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := promreg.With(reg).Err(); err != nil {
		t.Fatalf("Err of an unused Factory: %v", err)
	}
	first := promreg.With(reg)
	first.Counter("a_total", "a")
	first.Gauge("b_gauge", "b")
	if err := first.Err(); err != nil {
		t.Fatal(err)
	}

	// A second component defining the same metrics does not panic; every
	// clash is named, and the metrics it made still count.
	second := promreg.With(reg)
	c := second.Counter("a_total", "a")
	second.Gauge("b_gauge", "b")
	second.Counter("c_total", "c")
	err := second.Err()
	if err == nil {
		t.Fatal("Err: nil, want the clashes")
	}
	for _, name := range []string{"a_total", "b_gauge"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	if strings.Contains(err.Error(), "c_total") {
		t.Errorf("error %q names c_total, which registered", err)
	}
	c.Inc()
	if got := testutil.ToFloat64(c); got != 1 {
		t.Errorf("unregistered counter = %v, want 1", got)
	}
}

func TestFactoryNilRegisterer(t *testing.T) {
	f := promreg.With(nil)
	f.Counter("a_total", "a").Inc()
	f.Counter("a_total", "a").Inc()
	if err := f.Err(); err != nil {
		t.Fatalf("Err over a nil Registerer: %v", err)
	}
}

func TestFactoryShared(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var counters []*prometheus.CounterVec
	for range 2 {
		f := promreg.WithShared(reg)
		counters = append(counters, f.CounterVec("shared_total", "shared", "result"))
		if err := f.Err(); err != nil {
			t.Fatalf("Err: %v", err)
		}
	}
	if counters[0] != counters[1] {
		t.Fatal("the second Factory made a new collector, want the one registered first")
	}

	// Another collector of the same name and other labels is an error, and
	// the Factory still returns a collector that counts.
	f := promreg.WithShared(reg)
	c := f.CounterVec("shared_total", "shared", "other")
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "shared_total") {
		t.Fatalf("Err = %v, want one naming shared_total", err)
	}
	c.WithLabelValues("x").Inc()

	// Over a nil Registerer nothing is registered, nothing shared.
	f = promreg.WithShared(nil)
	if a, b := f.Counter("a_total", "a"), f.Counter("a_total", "a"); a == b || f.Err() != nil {
		t.Fatalf("WithShared(nil): same collector %v, err %v; want two, no error", a == b, f.Err())
	}
}
