package kms

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

// faultySigner flips one bit of every signature its key makes, as a faulty
// HSM or an RSA-CRT fault would.
type faultySigner struct{ crypto.Signer }

func (f faultySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := f.Signer.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	sig[len(sig)/2] ^= 0x10
	return sig, nil
}

func TestVerifiedSigner(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	digest := sha256.Sum256([]byte("tbs"))
	cases := []struct {
		name string
		key  crypto.Signer
		msg  []byte
		opts crypto.SignerOpts
	}{
		{"ecdsa p256", ec, digest[:], crypto.SHA256},
		{"rsa pkcs1v15", rk, digest[:], crypto.SHA256},
		{"rsa pss hash salt", rk, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}},
		{"rsa pss auto salt", rk, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}},
		{"ed25519", ed, []byte("message"), crypto.Hash(0)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := newVerifiedSigner(faultySigner{tc.key}).Sign(rand.Reader, tc.msg, tc.opts)
			if !errors.Is(err, ErrBadSignature) || sig != nil {
				t.Fatalf("faulty signature: got %x, %v; want nil, ErrBadSignature", sig, err)
			}
			sig, err = newVerifiedSigner(tc.key).Sign(rand.Reader, tc.msg, tc.opts)
			if err != nil || len(sig) == 0 {
				t.Fatalf("good signature refused: %v", err)
			}
		})
	}
}
