package inspect_test

import (
	"fmt"
	"io"
	"testing"
	"time"

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

// manyFindings is a report on n certificates with one finding each, the
// shape of a report on a 16 MiB bundle file, built without crypto.
func manyFindings(n int) *inspect.Report {
	r := &inspect.Report{Status: inspect.StatusInvalid}
	for i := range n {
		ref := fmt.Sprintf("chain[%d]", i)
		r.Certificates = append(r.Certificates, inspect.Certificate{Ref: ref, Role: "root"})
		r.Findings = append(r.Findings, inspect.Finding{Code: "svid-no-key-usage", Severity: inspect.SeverityError, Certificate: ref})
	}
	return r
}

// TestWriteShortLinear writes the short form of a report on 100,000
// certificates. Matching findings to certificates by scanning every finding
// for every certificate took minutes at this size; the deadline is far above
// the linear cost (see BenchmarkWriteShortMany).
func TestWriteShortLinear(t *testing.T) {
	r := manyFindings(100_000)
	done := make(chan error, 1)
	go func() { done <- inspect.WriteShort(io.Discard, r, inspect.TextOptions{}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the short form of 100,000 certificates took over a minute: not linear")
	}
}

// BenchmarkWriteShortMany measures the short form of a report on 100,000
// certificates.
func BenchmarkWriteShortMany(b *testing.B) {
	r := manyFindings(100_000)
	for b.Loop() {
		if err := inspect.WriteShort(io.Discard, r, inspect.TextOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
