package inspect_test

import (
	"io"
	"testing"

	"github.com/castellan-mesh/castellan/inspect"
)

// BenchmarkAnalyze measures the analysis of a leaf, intermediate and root
// with verification, SVID checks and a key match.
func BenchmarkAnalyze(b *testing.B) {
	sc := scenarios(b)[0]
	opts := inspect.Options{Now: sc.now}
	b.ReportAllocs()
	for b.Loop() {
		inspect.Analyze(sc.in, opts)
	}
}

// BenchmarkRender measures the three renderers on one report.
func BenchmarkRender(b *testing.B) {
	sc := scenarios(b)[0]
	r := inspect.Analyze(sc.in, inspect.Options{Now: sc.now})
	for _, f := range []struct {
		name  string
		write func(io.Writer) error
	}{
		{"text", func(w io.Writer) error { return inspect.WriteText(w, r, inspect.TextOptions{}) }},
		{"short", func(w io.Writer) error { return inspect.WriteShort(w, r, inspect.TextOptions{}) }},
		{"json", func(w io.Writer) error { return inspect.WriteJSON(w, r) }},
	} {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := f.write(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
