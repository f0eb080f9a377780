package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

// KeyType is a kind of key NewKey makes.
type KeyType string

// The kinds of key NewKey makes. P224 and RSA1024 are keys the CA
// refuses, for tests of that refusal.
const (
	P256    KeyType = "P-256"
	P384    KeyType = "P-384"
	P224    KeyType = "P-224"
	RSA2048 KeyType = "RSA-2048"
	RSA1024 KeyType = "RSA-1024"
	Ed25519 KeyType = "Ed25519"
)

// NewKey returns a new key of type kt. It fails the test for a type it
// does not know.
func NewKey(t testing.TB, kt KeyType) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch kt {
	case P256, P384, P224:
		k, err = ecdsa.GenerateKey(curve(t, kt), rand.Reader)
	case RSA2048:
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case RSA1024:
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case Ed25519:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("testpki: unknown key type %q", kt)
	}
	if err != nil {
		t.Fatalf("testpki: %s key: %v", kt, err)
	}
	return k
}

// curve returns the elliptic curve of an ECDSA key type, or fails the
// test.
func curve(t testing.TB, kt KeyType) elliptic.Curve {
	t.Helper()
	switch kt {
	case P256:
		return elliptic.P256()
	case P384:
		return elliptic.P384()
	case P224:
		return elliptic.P224()
	}
	t.Fatalf("testpki: %q is not an ECDSA key type", kt)
	return nil
}
