// Package kms gives the CA its signing key as a crypto.Signer, wherever the
// key lives. A key URI names the key and its store:
//
//   - file:///var/lib/castellan/ca-key.pem: a PEM key in a file, mode 0600
//     (the software default);
//   - pkcs11:token=castellan;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/castellan/pin:
//     a key in an HSM, generated inside the token and never extractable
//     (through go.step.sm/crypto/kms/pkcs11);
//   - vault-transit://transit/castellan-ca: a non-exportable key in
//     Vault's Transit engine; each signature is one transit/sign call with
//     prehashed input.
//
// Open returns a key that exists, Create makes a new one, and OpenOrCreate
// does whichever applies (the CA's first start creates its key).
package kms

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/castellan-mesh/castellan/internal/vault"
	"github.com/prometheus/client_golang/prometheus"
)

// Algorithm is the type and size of a new key. The names are Vault
// Transit's key types.
type Algorithm string

// The algorithms Create supports.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	ECDSAP384 Algorithm = "ecdsa-p384"
	RSA2048   Algorithm = "rsa-2048"
	RSA3072   Algorithm = "rsa-3072"
	RSA4096   Algorithm = "rsa-4096"
)

// Algorithms lists the supported algorithms, the default first.
var Algorithms = []Algorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096}

// ParseAlgorithm returns the Algorithm named s, or an error listing the
// supported ones.
func ParseAlgorithm(s string) (Algorithm, error) {
	for _, a := range Algorithms {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("kms: unknown key algorithm %q (want one of %v)", s, Algorithms)
}

// ErrKeyExists is returned by Create when the URI names a key that already
// exists. Create never overwrites a key.
var ErrKeyExists = errors.New("kms: key already exists")

// ErrKeyNotFound is returned by Open when the URI names no key.
var ErrKeyNotFound = errors.New("kms: key not found")

// Config is what the key stores need beyond the URI. The zero value works
// for file and pkcs11 URIs.
type Config struct {
	// Vault is the authenticated client for vault-transit URIs. Required
	// for them.
	Vault *vault.Client
	// TransitMaxBatch is the most signatures one transit/sign call
	// carries. Signatures asked for while a call is in flight are sent
	// together in the next (Transit's batch_input). 1 disables batching.
	// Default: 32.
	TransitMaxBatch int
	// Logger receives key creation events. Default: slog.Default().
	Logger *slog.Logger
	// Registerer, if set, receives the signing metrics
	// (castellan_kms_sign_duration_seconds, castellan_kms_sign_errors_total).
	Registerer prometheus.Registerer
}

// Key is a signing key held by a key store. It implements crypto.Signer;
// Close releases what the store holds open (a PKCS#11 session pool).
type Key struct {
	crypto.Signer
	uri     *URI
	closer  io.Closer
	backend string
}

// URI returns the key's URI, with any PIN redacted.
func (k *Key) URI() string { return k.uri.String() }

// SignContext signs digest, giving up when ctx ends if the key store can
// (Vault Transit); other stores sign as Sign does.
func (k *Key) SignContext(ctx context.Context, r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return signContext(ctx, k.Signer, r, digest, opts)
}

// String returns the key's URI, with any PIN redacted.
func (k *Key) String() string { return k.uri.String() }

// Close releases the key store's resources. The Key must not sign after.
func (k *Key) Close() error {
	if k.closer == nil {
		return nil
	}
	return k.closer.Close()
}

// keyStore is one backend: it opens and creates the keys of its scheme.
type keyStore interface {
	// open returns the key named by u, or an error wrapping
	// ErrKeyNotFound when there is none.
	open(ctx context.Context, u *URI) (crypto.Signer, error)
	// create generates the key named by u, or fails with an error wrapping
	// ErrKeyExists.
	create(ctx context.Context, u *URI, alg Algorithm) (crypto.Signer, error)
	io.Closer
}

// Open returns the existing key named by rawURI.
func Open(ctx context.Context, rawURI string, cfg Config) (*Key, error) {
	k, _, err := get(ctx, rawURI, "", cfg, false)
	return k, err
}

// Create generates a new key named by rawURI with algorithm alg. It fails
// with an error wrapping ErrKeyExists if the key exists.
func Create(ctx context.Context, rawURI string, alg Algorithm, cfg Config) (*Key, error) {
	if _, err := ParseAlgorithm(string(alg)); err != nil {
		return nil, err
	}
	k, _, err := get(ctx, rawURI, alg, cfg, true)
	return k, err
}

// OpenOrCreate returns the key named by rawURI, generating it with
// algorithm alg when it does not exist yet. created reports which.
func OpenOrCreate(ctx context.Context, rawURI string, alg Algorithm, cfg Config) (key *Key, created bool, err error) {
	if _, err := ParseAlgorithm(string(alg)); err != nil {
		return nil, false, err
	}
	return get(ctx, rawURI, alg, cfg, false)
}

// get opens the key, or creates it when alg is set and the key is missing
// (always when mustCreate).
func get(ctx context.Context, rawURI string, alg Algorithm, cfg Config, mustCreate bool) (*Key, bool, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u, err := ParseURI(rawURI)
	if err != nil {
		return nil, false, err
	}
	store, err := newStore(ctx, u, cfg)
	if err != nil {
		return nil, false, err
	}
	var (
		signer  crypto.Signer
		created bool
	)
	if !mustCreate {
		signer, err = store.open(ctx, u)
	}
	if mustCreate || (alg != "" && errors.Is(err, ErrKeyNotFound)) {
		signer, err = store.create(ctx, u, alg)
		if err == nil {
			created = true
			cfg.Logger.Info("created CA signing key", "uri", u.String(), "algorithm", string(alg))
		}
	}
	if err != nil {
		store.Close()
		return nil, false, err
	}
	backend := string(u.Scheme)
	if u.Scheme != SchemeFile {
		// A key outside the process may sign wrongly (hardware faults,
		// RSA-CRT faults): check every signature before it is used.
		signer = newVerifiedSigner(signer)
	}
	if cfg.Registerer != nil {
		m, err := registerMetrics(cfg.Registerer)
		if err != nil {
			store.Close()
			return nil, false, err
		}
		signer = &measuredSigner{Signer: signer, m: m, backend: backend}
	}
	return &Key{Signer: signer, uri: u, closer: store, backend: backend}, created, nil
}

func newStore(ctx context.Context, u *URI, cfg Config) (keyStore, error) {
	switch u.Scheme {
	case SchemeFile:
		return fileStore{}, nil
	case SchemePKCS11:
		return newPKCS11Store(ctx, u)
	case SchemeVaultTransit:
		if cfg.Vault == nil {
			return nil, fmt.Errorf("kms: %s needs a Vault client (set the Vault address and authentication)", u)
		}
		return &transitStore{client: cfg.Vault, maxBatch: cfg.TransitMaxBatch}, nil
	}
	return nil, fmt.Errorf("kms: unsupported scheme %q", u.Scheme)
}
