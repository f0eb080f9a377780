package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/jwtsvid/secretstore"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// jwtFlags are the JWT-SVID flags of "castellan ca".
type jwtFlags struct {
	ttl time.Duration
}

func (j *jwtFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&j.ttl, "jwt-svid-ttl", jwtsvid.DefaultTTL, "lifetime of a JWT-SVID (10s to 1h)")
}

func (j *jwtFlags) validate() error {
	if j.ttl < jwtsvid.MinTTL || j.ttl > jwtsvid.MaxTTL {
		return usageError{Err: fmt.Errorf("--jwt-svid-ttl %s: want %s to %s", j.ttl, jwtsvid.MinTTL, jwtsvid.MaxTTL)}
	}
	return nil
}

// keySet opens the CA's JWT signing keys (creating the first on the first
// start) and adds their reload to the CA's background jobs. With
// --material=kubernetes they live in the CA Secret, shared by the
// replicas; otherwise in the data directory or --signer-key-uri's store.
func (j *jwtFlags) keySet(ctx context.Context, k *kmsFlags, kube *kubeFlags, d *caDeps) (*jwtsvid.KeySet, error) {
	if kube.material == materialKubernetes {
		client, err := d.kubeClient()
		if err != nil {
			return nil, fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
		}
		st := &secretstore.Store{Client: client, Namespace: kube.namespace, Name: kube.secretName}
		ks, err := jwtsvid.Open(ctx, jwtsvid.Config{State: st, Keys: st, Logger: d.log})
		if err != nil {
			return nil, err
		}
		d.runners = append(d.runners, ks.Run)
		return ks, nil
	}
	ring, err := jwtKeyStore(ctx, k, d, d.dataDir)
	if err != nil {
		return nil, err
	}
	ks, err := jwtsvid.Open(ctx, jwtsvid.Config{Dir: d.dataDir, Keys: ring, Logger: d.log})
	if err != nil {
		ring.Close()
		return nil, err
	}
	d.runners = append(d.runners, func(ctx context.Context) error {
		defer ring.Close()
		return ks.Run(ctx)
	})
	return ks, nil
}

// jwtKeyStore opens the key store of the JWT signing keys: the store of
// --signer-key-uri when it is set (an HSM, Vault Transit: the keys are
// new objects there), else PEM files in the data directory.
func jwtKeyStore(ctx context.Context, k *kmsFlags, d *caDeps, dataDir string) (*kms.Ring, error) {
	uri := k.keyURI
	if uri == "" {
		abs, err := filepath.Abs(dataDir)
		if err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		uri = "file://" + filepath.Join(abs, "jwt-key.pem")
	}
	u, err := kms.ParseURI(uri)
	if err != nil {
		return nil, usageError{Err: fmt.Errorf("--signer-key-uri: %w", err)}
	}
	cfg := kms.Config{Logger: d.log}
	if u.Scheme == kms.SchemeVaultTransit {
		if cfg.Vault, err = k.vaultClient(d); err != nil {
			return nil, err
		}
	}
	return kms.NewRing(ctx, uri, kms.ECDSAP256, cfg)
}

// jwtRotateArgs are the flags of "castellan ca rotate STEP --jwt".
type jwtRotateArgs struct {
	step, dataDir    string
	propagation, ttl time.Duration
	force            bool
	kms              *kmsFlags
	// kube and kubeconfig select the CA Secret (--material=kubernetes).
	kube       *kubeFlags
	kubeconfig string
}

// runJWTRotate takes a step of a JWT signing key rotation: the same
// prepare, activate and retire as the root's, for the JWT key.
func runJWTRotate(ctx context.Context, a jwtRotateArgs, out *cliflag.Output, stdout, stderr io.Writer) error {
	log := cliflag.NewCLILogger(stderr)
	r := &jwtsvid.Rotator{Dir: a.dataDir, PropagationDelay: a.propagation, TTL: a.ttl, Logger: log}
	if a.kube != nil && a.kube.material == materialKubernetes {
		client, err := (&caDeps{kubeconfig: a.kubeconfig}).kubeClient()
		if err != nil {
			return fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
		}
		st := &secretstore.Store{Client: client, Namespace: a.kube.namespace, Name: a.kube.secretName}
		r.State, r.Keys = st, st
	} else {
		ring, err := jwtKeyStore(ctx, a.kms, &caDeps{log: log, reg: prometheus.NewRegistry()}, a.dataDir)
		if err != nil {
			return err
		}
		defer ring.Close()
		r.Keys = ring
	}
	var err error
	switch a.step {
	case "prepare":
		err = r.Prepare(ctx)
	case "activate":
		err = r.Activate(ctx, a.force)
	case "retire":
		err = r.Retire(ctx, a.force)
	case "status":
	default:
		return usageError{Err: fmt.Errorf("unknown rotate step %q: want prepare, activate, retire or status", a.step)}
	}
	if err != nil {
		return err
	}
	st, err := r.Status(ctx)
	if err != nil {
		return err
	}
	return out.Write(stdout, st, func(w io.Writer) error { return printJWTRotation(w, st) })
}

func printJWTRotation(w io.Writer, st *jwtsvid.Status) error {
	fmt.Fprintf(w, "keys   jwt\nphase  %s\n", st.Phase)
	if !st.ActivateAfter.IsZero() {
		fmt.Fprintf(w, "activate after  %s\n", st.ActivateAfter.Format(time.RFC3339))
	}
	if !st.RetireAfter.IsZero() {
		fmt.Fprintf(w, "retire after    %s\n", st.RetireAfter.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tKID\tNAME")
	for _, k := range st.Keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k.State, k.KeyID, k.Name)
	}
	return tw.Flush()
}
