package main

import (
	"context"
	"crypto"
	"flag"

	"github.com/castellan-mesh/castellan/ca"
)

// kubeFlags select CA material kept in Kubernetes (a Secret shared by
// replicas, created under a Lease) and trust-bundle distribution.
type kubeFlags struct{}

func (k *kubeFlags) register(fs *flag.FlagSet) {}

// source returns Kubernetes-backed signing material, or nil when the flags
// keep the material in the data directory. Background jobs (leader
// election, trust distribution) go in d.runners.
func (k *kubeFlags) source(ctx context.Context, d *caDeps, signer crypto.Signer) (ca.Source, error) {
	return nil, nil
}
