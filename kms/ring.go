package kms

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"path"
	"sync"
)

// MaxKeyNameLen bounds the name of a key in a Ring.
const MaxKeyNameLen = 64

// Ring holds the keys of one key store that a CA signs with over time: the
// key its URI names, and the keys of later roots, created in the same
// store under other names. A root rotation never leaves the store: the
// next root's key in an HSM is a new object in the same token, in Vault
// Transit a new key under the same mount, in files a new file beside the
// first.
//
// Keys are opened once and kept; Close releases the store.
type Ring struct {
	base  *URI
	alg   Algorithm
	cfg   Config
	store keyStore
	m     *metrics

	mu   sync.Mutex
	keys map[string]crypto.Signer
}

// NewRing opens the key store of rawURI. Keys it creates have algorithm
// alg.
func NewRing(ctx context.Context, rawURI string, alg Algorithm, cfg Config) (*Ring, error) {
	if _, err := ParseAlgorithm(string(alg)); err != nil {
		return nil, err
	}
	u, err := ParseURI(rawURI)
	if err != nil {
		return nil, err
	}
	store, err := newStore(ctx, u, cfg)
	if err != nil {
		return nil, err
	}
	r := &Ring{base: u, alg: alg, cfg: cfg, store: store, keys: map[string]crypto.Signer{}}
	if cfg.Registerer != nil {
		if r.m, err = registerMetrics(cfg.Registerer); err != nil {
			store.Close()
			return nil, err
		}
	}
	return r, nil
}

// URI returns the URI of the key named name ("" for the configured key),
// with any PIN redacted.
func (r *Ring) URI(name string) string {
	u, err := r.base.WithName(name)
	if err != nil {
		return r.base.String() + " (key " + name + ")"
	}
	return u.String()
}

// Open returns the key named name; "" names the key of the Ring's URI. It
// fails with an error wrapping ErrKeyNotFound when there is no such key.
func (r *Ring) Open(ctx context.Context, name string) (crypto.Signer, error) {
	s, _, err := r.get(ctx, name, false, false)
	return s, err
}

// OpenOrCreate returns the key named name, creating it when it does not
// exist. created reports which.
func (r *Ring) OpenOrCreate(ctx context.Context, name string) (key crypto.Signer, created bool, err error) {
	return r.get(ctx, name, true, false)
}

// Create generates a new key named name in the Ring's store. It never
// replaces a key: an existing name fails with an error wrapping
// ErrKeyExists.
func (r *Ring) Create(ctx context.Context, name string) (crypto.Signer, error) {
	s, _, err := r.get(ctx, name, true, true)
	return s, err
}

func (r *Ring) get(ctx context.Context, name string, create, mustCreate bool) (crypto.Signer, bool, error) {
	u, err := r.base.WithName(name)
	if err != nil {
		return nil, false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.keys[name]; ok {
		if mustCreate {
			return nil, false, fmt.Errorf("kms: %s: %w", u, ErrKeyExists)
		}
		return s, false, nil
	}
	var (
		signer  crypto.Signer
		created bool
	)
	if !mustCreate {
		signer, err = r.store.open(ctx, u)
	}
	if mustCreate || (create && errors.Is(err, ErrKeyNotFound)) {
		if signer, err = r.store.create(ctx, u, r.alg); err == nil {
			created = true
			if r.cfg.Logger != nil {
				r.cfg.Logger.Info("created CA signing key", "uri", u.String(), "algorithm", string(r.alg))
			}
		}
	}
	if err != nil {
		return nil, false, err
	}
	if u.Scheme != SchemeFile {
		// As in Open: a key outside the process may sign wrongly.
		signer = newVerifiedSigner(signer)
	}
	if r.m != nil {
		signer = &measuredSigner{Signer: signer, m: r.m, backend: string(u.Scheme)}
	}
	r.keys[name] = signer
	return signer, created, nil
}

// Close releases the key store. No key of the Ring may sign after.
func (r *Ring) Close() error { return r.store.Close() }

// WithName returns the URI of the key named name in u's key store: for a
// file, name.pem in the same directory; for PKCS#11, the object labelled
// name in the same token (its CKA_ID derived from the label); for Vault
// Transit, the key name under the same mount, at its latest version. The
// empty name returns u. A name is letters, digits, '_', '.' and '-', at
// most MaxKeyNameLen long.
func (u *URI) WithName(name string) (*URI, error) {
	if name == "" {
		return u, nil
	}
	if len(name) > MaxKeyNameLen || !transitNameRE.MatchString(name) {
		return nil, fmt.Errorf("kms: key name %q: want at most %d letters, digits, '_', '.' and '-', starting with a letter or digit", name, MaxKeyNameLen)
	}
	out := *u
	switch u.Scheme {
	case SchemeFile:
		out.Path = path.Join(path.Dir(u.Path), name+".pem")
	case SchemePKCS11:
		out.PKCS11.Object, out.PKCS11.ID = name, nil
	case SchemeVaultTransit:
		out.Key, out.KeyVersion = name, 0
	default:
		return nil, fmt.Errorf("kms: unsupported scheme %q", u.Scheme)
	}
	return &out, nil
}
