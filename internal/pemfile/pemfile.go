// Package pemfile reads and writes PEM certificates and private keys, with
// errors that name the file and block, and writes that are atomic and keep
// keys private (0600).
package pemfile

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// Size limits of the files Read* accept: a file over its limit (a wrong
// path, a device, a file being appended to without end) is refused before
// it is parsed, never read whole.
const (
	// MaxCertificatesFile bounds a certificate file: some hundreds of
	// certificates, far more than any chain or trust bundle.
	MaxCertificatesFile = 1 << 20
	// MaxPrivateKeyFile bounds a private key file; an RSA-8192 key is
	// under 7 KiB of PEM.
	MaxPrivateKeyFile = 64 << 10
)

// ParseCertificates decodes every CERTIFICATE block in data. Blocks of other
// types, and text between blocks, are refused so that a key pasted into a
// certificate file is noticed.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for i := 0; ; i++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d has type %q, want CERTIFICATE", i, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%d bytes of non-PEM data after certificate %d", len(bytes.TrimSpace(rest)), len(certs))
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// ReadCertificates reads the PEM certificates in the file at path, of at
// most MaxCertificatesFile bytes.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := smallfile.Read(path, MaxCertificatesFile)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ParsePrivateKey decodes one PEM private key: PKCS#8 ("PRIVATE KEY"),
// SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM private key found")
	}
	var (
		key any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block has type %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("could not parse %s: %w", b.Type, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", key)
	}
	return s, nil
}

// ReadPrivateKey reads one PEM private key from the file at path, of at
// most MaxPrivateKeyFile bytes.
func ReadPrivateKey(path string) (crypto.Signer, error) {
	data, err := smallfile.Read(path, MaxPrivateKeyFile)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// EncodeCertificates returns certs as concatenated PEM.
func EncodeCertificates(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// EncodePrivateKey returns key as a PKCS#8 PEM block.
func EncodePrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteCertificates writes certs to path atomically, mode 0644.
func WriteCertificates(path string, certs []*x509.Certificate) error {
	return WriteFileAtomic(path, EncodeCertificates(certs), 0o644)
}

// WritePrivateKey writes key to path, mode 0600. It fails if path exists,
// so a key is never overwritten.
func WritePrivateKey(path string, key crypto.Signer) error {
	data, err := EncodePrivateKey(key)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// WriteFileAtomic writes data to a temporary file beside path with mode
// perm, syncs it, and renames it over path, so a reader sees either the old
// or the new content, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	cleanup := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return cleanup(err)
	}
	if _, err := f.Write(data); err != nil {
		return cleanup(err)
	}
	if err := f.Sync(); err != nil {
		return cleanup(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
