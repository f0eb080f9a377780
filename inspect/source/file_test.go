package source_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestReaderAndFile(t *testing.T) {
	p := testpki.New(t)
	dir := t.TempDir()
	path := testpki.WriteFile(t, dir, "combined.pem", append(testpki.CertPEM(p.Leaf, p.Intermediate), testpki.KeyPEM(t, p.LeafKey)...))

	in, err := source.File(path)
	if err != nil {
		t.Fatal(err)
	}
	if in.Source != "file:"+path || len(in.Chain) != 2 || in.PublicKey == nil || in.KeySource != "file:"+path {
		t.Errorf("File = %+v", in)
	}
	in, err = source.Reader(bytes.NewReader(testpki.CertPEM(p.Leaf)), "stdin")
	if err != nil || in.Source != "stdin" || len(in.Chain) != 1 || in.PublicKey != nil {
		t.Errorf("Reader = %+v, %v", in, err)
	}

	for _, tt := range []struct {
		name, wantErr string
		load          func() (inspect.Input, error)
	}{
		{"missing file", "no such file", func() (inspect.Input, error) { return source.File(dir + "/nope.pem") }},
		{"directory", "is a directory", func() (inspect.Input, error) { return source.File(dir) }},
		{"empty stdin", "stdin is empty", func() (inspect.Input, error) { return source.Reader(strings.NewReader(""), "stdin") }},
		{"too large", "larger than", func() (inspect.Input, error) {
			return source.Reader(io.LimitReader(zeros{}, source.MaxInputSize+10), "stdin")
		}},
		{"garbage names the source", "source: stdin: pemder: input is not PEM", func() (inspect.Input, error) {
			return source.Reader(strings.NewReader("garbage"), "stdin")
		}},
		{"missing key file", "no such file", func() (inspect.Input, error) { return source.Key(path + ".none") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.load(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	keyOnly := testpki.WriteFile(t, dir, "cert-only.pem", testpki.CertPEM(p.Leaf))
	if _, err := source.Key(keyOnly); err == nil || !strings.Contains(err.Error(), "no private key PEM block") {
		t.Errorf("Key(cert only) = %v", err)
	}
	keyPath := testpki.WriteFile(t, dir, "key.pem", testpki.KeyPEM(t, p.LeafKey))
	k, err := source.Key(keyPath)
	if err != nil || !p.LeafKey.PublicKey.Equal(k.PublicKey) || k.KeySource != "file:"+keyPath {
		t.Errorf("Key = %+v, %v", k, err)
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
