package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// fileStore keeps software keys in PEM files. Its policy is the one for
// every CA key file: a key is created with mode 0600 and never
// overwritten, and a key file that others may read or write, or that its
// group may write, is refused, with an error that says how to fix it; a
// key anyone could have read is not trusted to sign. Group read is
// allowed: Kubernetes makes a Secret volume's files readable by the pod's
// fsGroup, and Debian's ssl-cert convention (0640) is the same idea.
type fileStore struct{}

// looseKeyBits are the permission bits a key file must not have: any for
// others, and write for its group.
const looseKeyBits = 0o027

func (fileStore) open(_ context.Context, u *URI) (crypto.Signer, error) {
	fi, err := os.Stat(u.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("kms: %s: %w", u.Path, ErrKeyNotFound)
	case err != nil:
		return nil, fmt.Errorf("kms: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("kms: %s is not a regular file", u.Path)
	case fi.Mode().Perm()&looseKeyBits != 0:
		return nil, fmt.Errorf("kms: key file %s has mode %s; others must have no access to a key and its group may at most read it (chmod 600 or 640; a Kubernetes Secret volume needs defaultMode: 0400 or 0440)", u.Path, fi.Mode().Perm())
	}
	key, err := pemfile.ReadPrivateKey(u.Path)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	return key, nil
}

func (fileStore) create(_ context.Context, u *URI, alg Algorithm) (crypto.Signer, error) {
	key, err := generateSoftware(alg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(u.Path), 0o700); err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	// WritePrivateKey creates the file exclusively with mode 0600, so an
	// existing key is never overwritten.
	if err := pemfile.WritePrivateKey(u.Path, key); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("kms: %s: %w", u.Path, ErrKeyExists)
		}
		return nil, fmt.Errorf("kms: %w", err)
	}
	return key, nil
}

func (fileStore) Close() error { return nil }

// GenerateKey makes a software key of algorithm alg, for a store that
// keeps key material itself (a Kubernetes Secret): the one place, with the
// file store, where Castellan makes software CA keys.
func GenerateKey(alg Algorithm) (crypto.Signer, error) { return generateSoftware(alg) }

// generateSoftware makes an in-memory key of algorithm alg.
func generateSoftware(alg Algorithm) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case ECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, fmt.Errorf("kms: unknown key algorithm %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("kms: could not generate %s key: %w", alg, err)
	}
	return key, nil
}
