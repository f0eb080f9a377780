package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
)

// ErrBadSignature is returned when a key store produced a signature that
// does not verify with the key's public key: a faulty HSM, a fault in an
// RSA-CRT computation, a key store answering for another key. Such a
// signature is never returned.
var ErrBadSignature = errors.New("kms: the key store returned a signature that does not verify")

// verifiedSigner checks each signature of a key held outside the process
// (PKCS#11, Vault Transit) against the public key before returning it.
// A faulty RSA-CRT signature can reveal the private key, and a bad
// signature must never reach a workload in a certificate.
type verifiedSigner struct {
	crypto.Signer
	pub crypto.PublicKey
}

func newVerifiedSigner(s crypto.Signer) *verifiedSigner {
	return &verifiedSigner{Signer: s, pub: s.Public()}
}

// Sign signs with the key store and verifies the result.
func (s *verifiedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(s.pub, digest, sig, opts); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return sig, nil
}

// SignContext signs with the key store, giving up when ctx ends if it
// can, and verifies the result.
func (s *verifiedSigner) SignContext(ctx context.Context, r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := signContext(ctx, s.Signer, r, digest, opts)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(s.pub, digest, sig, opts); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return sig, nil
}

// contextSigner is a signer that can give up when a context ends (Vault
// Transit); ca.ContextSigner is the same interface, on the caller's side.
type contextSigner interface {
	SignContext(ctx context.Context, r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// signContext signs with s, through its SignContext when it has one.
func signContext(ctx context.Context, s crypto.Signer, r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if cs, ok := s.(contextSigner); ok {
		return cs.SignContext(ctx, r, digest, opts)
	}
	return s.Sign(r, digest, opts)
}

// verifySignature checks sig over digest (or, for Ed25519, the message)
// as crypto.Signer's contract for pub's type defines it.
func verifySignature(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA verification failure")
		}
		return nil
	case *rsa.PublicKey:
		if opts == nil {
			return errors.New("no signer options")
		}
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			vo := *pss
			if vo.SaltLength == rsa.PSSSaltLengthEqualsHash || vo.SaltLength == rsa.PSSSaltLengthAuto {
				// Auto salt means the largest when signing; any when verifying.
				vo.SaltLength = rsa.PSSSaltLengthAuto
			}
			return rsa.VerifyPSS(k, pss.HashFunc(), digest, sig, &vo)
		}
		return rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig)
	case ed25519.PublicKey:
		o := &ed25519.Options{}
		if eo, ok := opts.(*ed25519.Options); ok {
			o = eo
		} else if opts != nil {
			o.Hash = opts.HashFunc()
		}
		return ed25519.VerifyWithOptions(k, digest, sig, o)
	}
	return fmt.Errorf("cannot verify signatures of %T keys", pub)
}
