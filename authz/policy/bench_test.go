package policy_test

import (
	"os"
	"testing"

	"github.com/castellan-mesh/castellan/authz/policy"
)

func BenchmarkDecodeMesh(b *testing.B) {
	data, err := os.ReadFile("../testdata/mesh.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := policy.Decode(data, "mesh.yaml"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTranslateChain(b *testing.B) {
	data, err := os.ReadFile("../testdata/mesh.yaml")
	if err != nil {
		b.Fatal(err)
	}
	t := &testing.T{}
	for b.Loop() {
		checkDecodeChain(t, data)
	}
}
