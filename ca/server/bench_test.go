package server

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCreateCertificate is one issuance end to end in one process: a
// real gRPC client over TLS (one connection, GOMAXPROCS×8 callers) and the
// CA's gRPC server with its interceptors, authentication (a table lookup),
// the issuance path and the response. Allocations and CPU per call are
// those of both sides together; scripts/bench-ca.sh measures the CA
// process alone against the crypto floor.
func BenchmarkCreateCertificate(b *testing.B) {
	s := start(b)
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i] = csrFor(b, "spiffe://cluster.local/ns/default/sa/sleep")
	}
	ctx := context.Background()
	if _, err := s.client.CreateCertificate(ctx, "good", csrs[0], 0); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	c0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.client.CreateCertificate(ctx, "good", csrs[i%len(csrs)], 0); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
