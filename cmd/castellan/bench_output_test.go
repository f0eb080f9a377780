package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/sds/sdsload"
)

// TestBenchResults checks the -o json form of the load generators'
// results: seconds, not nanoseconds, and unmeasured figures left out.
func TestBenchResults(t *testing.T) {
	ca := newBenchCAResult(&loadgen.Result{
		Requests: 1000, Errors: 0, Elapsed: 2 * time.Second, P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 5 * time.Millisecond, Max: 9 * time.Millisecond,
		TokenReviews: -1, ClientCPU: 100 * time.Millisecond, ServerCPU: 200 * time.Millisecond, ServerUser: -1, ServerSys: -1, OtherCPU: 0.012,
		Floor:        &loadgen.Floor{PerOp: 100 * time.Microsecond, Samples: []time.Duration{100 * time.Microsecond}},
		ServerCounts: &loadgen.ProcCounts{ReadCalls: 100, WriteCalls: 750, VoluntarySwitches: 1500, InvoluntarySwitches: 20},
	}, loadgen.Config{Concurrency: 32, Connections: 1}, nil)
	now := time.Now()
	sds := newBenchSDSResult(sdsload.Result{Streams: 10, Connect: time.Second, Rotations: []sdsload.Rotation{
		{Triggered: now, Installed: now.Add(10 * time.Millisecond), First: now.Add(20 * time.Millisecond), Last: now.Add(60 * time.Millisecond)},
	}}, true, false)
	for _, tt := range []struct {
		name   string
		v      any
		want   map[string]any
		absent []string
	}{
		{"ca", ca, map[string]any{"requests": 1000.0, "perSecond": 500.0, "caCPUPerCSRSeconds": 0.0002, "floorSeconds": 0.0001, "caOverFloor": 2.0, "otherCPUShare": 0.012,
			"caPerCSR":       map[string]any{"readSyscalls": 0.1, "writeSyscalls": 0.75, "voluntaryContextSwitches": 1.5, "involuntaryContextSwitches": 0.02},
			"latencySeconds": map[string]any{"p50": 0.001, "p90": 0.002, "p99": 0.005, "max": 0.009}}, []string{"tokenReviews", "junkFlood"}},
		{"sds", sds, map[string]any{"streams": 10.0, "delta": true, "connectSeconds": 1.0, "fanOutMedianSeconds": 0.05}, []string{"rssBeforeBytes"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := cliflag.WriteDocument(&buf, tt.v, cliflag.OutputJSON); err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			for k, want := range tt.want {
				g, _ := json.Marshal(got[k])
				w, _ := json.Marshal(want)
				if !bytes.Equal(g, w) {
					t.Errorf("%s = %s, want %s", k, g, w)
				}
			}
			for _, k := range tt.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s is present: %s", k, buf.String())
				}
			}
		})
	}
}
