package promreg_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

func counter(name string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: "test counter"})
}

func TestRegister(t *testing.T) {
	tests := []struct {
		name    string
		before  []string // registered on the registry first
		names   []string // registered by Register
		wantErr []string // every text the error must hold; none: no error
	}{
		{name: "fresh", names: []string{"a_total", "b_total"}},
		{name: "none", names: nil},
		{name: "one clash", before: []string{"a_total"}, names: []string{"a_total", "b_total"}, wantErr: []string{"a_total"}},
		{name: "every clash named", before: []string{"a_total", "b_total"}, names: []string{"a_total", "b_total", "c_total"}, wantErr: []string{"a_total", "b_total"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			for _, n := range tt.before {
				reg.MustRegister(counter(n))
			}
			var cs []prometheus.Collector
			for _, n := range tt.names {
				cs = append(cs, counter(n))
			}
			err := promreg.Register(reg, cs...)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Register: %v", err)
				}
				if got := testutil.CollectAndCount(reg); got != len(tt.names) {
					t.Fatalf("registry holds %d metrics, want %d", got, len(tt.names))
				}
				return
			}
			if err == nil {
				t.Fatal("Register: no error, want one naming the clash")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
			// Collectors after a clash are still registered.
			if got, want := testutil.CollectAndCount(reg), len(tt.before)+len(tt.names)-len(tt.wantErr); got != want {
				t.Errorf("registry holds %d metrics, want %d", got, want)
			}
		})
	}
}

func TestRegisterNilRegisterer(t *testing.T) {
	if err := promreg.Register(nil, counter("a_total"), counter("a_total")); err != nil {
		t.Fatalf("Register(nil, ...): %v", err)
	}
}

func TestShared(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	first, err := promreg.Shared(reg, counter("shared_total"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := promreg.Shared(reg, counter("shared_total"))
	if err != nil {
		t.Fatalf("second Shared: %v", err)
	}
	if first != second {
		t.Fatal("second Shared returned a new collector, want the one registered first")
	}
	second.Inc()
	if got := testutil.ToFloat64(first); got != 1 {
		t.Fatalf("shared counter = %v, want 1", got)
	}

	// The same description held by a collector of another type is an error.
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vec_total", Help: "test counter"}, nil)
	if _, err := promreg.Shared(reg, vec); err != nil {
		t.Fatal(err)
	}
	if _, err := promreg.Shared(reg, counter("vec_total")); err == nil || !strings.Contains(err.Error(), "CounterVec") {
		t.Fatalf("Shared over a CounterVec as a Counter: err = %v, want one naming the type registered", err)
	}

	// Another collector of the same name and other labels is an error.
	other := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shared_total", Help: "test counter"}, []string{"x"})
	if _, err := promreg.Shared(reg, other); err == nil {
		t.Fatal("Shared with a clashing description: no error")
	}

	// A nil registry leaves the collector alone.
	c := counter("unregistered_total")
	if got, err := promreg.Shared(nil, c); err != nil || got != c {
		t.Fatalf("Shared(nil, c) = %v, %v; want c, nil", got, err)
	}
}

func TestNewRegistry(t *testing.T) {
	mfs, err := promreg.NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"go_goroutines": false, "process_start_time_seconds": false, "castellan_build_info": false}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; ok {
			want[mf.GetName()] = true
		}
	}
	for name, found := range want {
		if !found {
			t.Errorf("NewRegistry gathers no %s", name)
		}
	}
}
