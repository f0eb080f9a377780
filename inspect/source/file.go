package source

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/pemder"
)

// File loads the certificates in the file at path (see ParseCertificates).
// When the file also holds a private key, its public half is kept so that
// Analyze checks that it matches the leaf.
func File(path string) (inspect.Input, error) {
	data, err := readFile(path)
	if err != nil {
		return inspect.Input{}, err
	}
	return fromBytes(data, "file:"+path)
}

// Reader loads the certificates read from r, named name in the report (for
// example "stdin"), like File.
func Reader(r io.Reader, name string) (inspect.Input, error) {
	data, err := readAll(r, name)
	if err != nil {
		return inspect.Input{}, err
	}
	return fromBytes(data, name)
}

func fromBytes(data []byte, name string) (inspect.Input, error) {
	certs, err := pemder.ParseCertificates(data)
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: %s: %w", name, err)
	}
	in := inspect.Input{Source: name, Chain: certs}
	if pub, err := pemder.ParseKey(data); err == nil {
		in.PublicKey, in.KeySource = pub, name
	}
	return in, nil
}

// Key loads the private key in the file at path and returns an Input
// carrying only its public half and source, to merge into another Input.
func Key(path string) (inspect.Input, error) {
	data, err := readFile(path)
	if err != nil {
		return inspect.Input{}, err
	}
	pub, err := pemder.ParseKey(data)
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: key file %s: %w", path, err)
	}
	return inspect.Input{PublicKey: pub, KeySource: "file:" + path}, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("source: %s is a directory", path)
	}
	return readAll(f, path)
}

func readAll(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxInputSize+1))
	if err != nil {
		return nil, fmt.Errorf("source: reading %s: %w", name, err)
	}
	if len(data) > MaxInputSize {
		return nil, fmt.Errorf("source: %s is larger than %d bytes", name, MaxInputSize)
	}
	if len(data) == 0 {
		return nil, errors.New("source: " + name + " is empty")
	}
	return data, nil
}
