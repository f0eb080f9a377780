package main

import (
	"context"
	"crypto"
	"flag"

	"github.com/castellan-mesh/castellan/ca"
)

// kmsFlags select where the CA key lives and whether an upstream authority
// (Vault's PKI engine) signs Castellan's intermediate.
type kmsFlags struct{}

func (k *kmsFlags) register(fs *flag.FlagSet) {}

// signer returns the CA key named by the flags, or nil for the default
// (a key file in the data directory).
func (k *kmsFlags) signer(ctx context.Context, d *caDeps) (crypto.Signer, error) { return nil, nil }

// source returns the upstream-backed signing material, or nil when no
// upstream is configured. Background jobs go in d.runners.
func (k *kmsFlags) source(ctx context.Context, d *caDeps, signer crypto.Signer) (ca.Source, error) {
	return nil, nil
}
