package podindex

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkIndexMemory reports the heap the index holds per pod: its own
// entry plus the slimmed object the informer's store keeps.
//
//	go test -run '^$' -bench IndexMemory ./agent/attest/podindex/
func BenchmarkIndexMemory(b *testing.B) {
	const n = 10000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		x := newIndex(nil, node)
		store := make([]any, 0, n)
		for i := range n {
			p := newPod(fmt.Sprintf("%08d-0000-4000-8000-000000000000", i), fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("pod-%d", i),
				fmt.Sprintf("sa-%d", i%30), node, running)
			s, err := slim(p)
			if err != nil {
				b.Fatal(err)
			}
			store = append(store, s)
			x.set(s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/pod")
		runtime.KeepAlive(x)
		runtime.KeepAlive(store)
	}
}
