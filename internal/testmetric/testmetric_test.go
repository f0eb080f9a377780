package testmetric

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSum(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"api"})
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "g", Help: "g"}, []string{"api"})
	reg.MustRegister(c, g)
	c.WithLabelValues("sotw").Add(2)
	c.WithLabelValues("delta").Add(3)
	g.WithLabelValues("sotw").Set(7)
	tests := []struct {
		name, metric, value string
		want                float64
	}{
		{name: "one label value", metric: "c_total", value: "sotw", want: 2},
		{name: "every sample", metric: "c_total", want: 5},
		{name: "gauge", metric: "g", value: "sotw", want: 7},
		{name: "no such value", metric: "c_total", value: "none", want: 0},
		{name: "no such metric", metric: "absent", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sum(t, reg, tt.metric, tt.value); got != tt.want {
				t.Fatalf("Sum(%s, %q) = %v, want %v", tt.metric, tt.value, got, tt.want)
			}
		})
	}
}
