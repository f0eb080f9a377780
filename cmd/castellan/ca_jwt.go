package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/jwtsvid/secretstore"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/promreg"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// jwtFlags are the JWT-SVID flags of "castellan ca".
type jwtFlags struct {
	ttl time.Duration
	// rotateEvery is how long a JWT signing key signs before the CA
	// rotates it by itself (0: only by hand).
	rotateEvery time.Duration
}

func (j *jwtFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&j.ttl, "jwt-svid-ttl", jwtsvid.DefaultTTL, "lifetime of a JWT-SVID (10s to 1h)")
	fs.DurationVar(&j.rotateEvery, "jwt-key-rotate-every", jwtsvid.DefaultRotateEvery, "rotate the JWT signing key automatically once it has signed this long: the next key is published --root-propagation-delay before, the previous one retired --jwt-svid-ttl (+10m) after (0 disables; at least twice --root-propagation-delay)")
}

func (j *jwtFlags) validate() error {
	if j.ttl < jwtsvid.MinTTL || j.ttl > jwtsvid.MaxTTL {
		return usageError{Err: fmt.Errorf("--jwt-svid-ttl %s: want %s to %s", j.ttl, jwtsvid.MinTTL, jwtsvid.MaxTTL)}
	}
	return nil
}

// keySet opens the CA's JWT signing keys (creating the first on the first
// start) and adds their reload to the CA's background jobs. The keys are
// in --signer-key-uri's store when it is set (an HSM, Vault Transit),
// else in the data directory, or with --material=kubernetes in the CA
// Secret; with --material=kubernetes the state is in the CA Secret, so
// that the replicas share it, and src, the store watching that Secret,
// wakes the keys' reload at each change of it.
func (j *jwtFlags) keySet(ctx context.Context, k *kmsFlags, kube *kubeFlags, d *caDeps, src ca.Source) (*jwtsvid.KeySet, error) {
	state, keys, closeKeys, err := jwtStores(ctx, k, kube, d, d.dataDir)
	if err != nil {
		return nil, err
	}
	if err := jwtsvid.CheckRotateEvery(j.rotateEvery, d.policy.PropagationDelay); err != nil {
		closeKeys()
		return nil, usageError{Err: fmt.Errorf("--jwt-key-rotate-every: %w", err)}
	}
	cfg := jwtsvid.Config{State: state, Keys: keys, Logger: d.log}
	if n, ok := src.(ca.Notifier); ok && kube != nil && kube.material == materialKubernetes {
		cfg.StateChanged = n.Changed
	}
	ks, err := jwtsvid.Open(ctx, cfg)
	if err != nil {
		closeKeys()
		return nil, err
	}
	// Every replica runs the automatic steps: each is a write checked
	// against the shared state, so one replica takes it.
	rot := &jwtsvid.Rotator{State: state, Keys: keys, PropagationDelay: d.policy.PropagationDelay, TTL: j.ttl, Logger: d.log}
	col := jwtsvid.NewCollector(ks, rot)
	if err := promreg.Register(d.reg, col); err != nil {
		closeKeys()
		return nil, fmt.Errorf("registering the JWT rotation metrics: %w", err)
	}
	d.runners = append(d.runners, func(ctx context.Context) error {
		defer closeKeys()
		var wg sync.WaitGroup
		defer wg.Wait() // before the key store closes
		if j.rotateEvery > 0 {
			interval := jwtsvid.AutoInterval(j.rotateEvery, d.policy.PropagationDelay)
			wg.Go(func() { _ = rot.Run(ctx, interval, j.rotateEvery, col.ObserveStep) })
		}
		return ks.Run(ctx)
	})
	return ks, nil
}

// jwtStores returns where the JWT key state and keys are (see keySet), and
// what releases the key store.
func jwtStores(ctx context.Context, k *kmsFlags, kube *kubeFlags, d *caDeps, dataDir string) (jwtsvid.StateStore, jwtsvid.KeyStore, func(), error) {
	var state jwtsvid.StateStore = jwtsvid.DirState(dataDir)
	var secret *secretstore.Store
	if kube != nil && kube.material == materialKubernetes {
		client, err := d.kubeClient()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
		}
		secret = &secretstore.Store{Client: client, Namespace: kube.namespace, Name: kube.secretName}
		state = secret
	}
	if secret != nil && k.keyURI == "" {
		return state, secret, func() {}, nil
	}
	ring, err := jwtKeyStore(ctx, k, d, dataDir)
	if err != nil {
		return nil, nil, nil, err
	}
	return state, ring, func() { ring.Close() }, nil
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
	state, keys, closeKeys, err := jwtStores(ctx, a.kms, a.kube, &caDeps{log: log, reg: prometheus.NewRegistry(), kubeconfig: a.kubeconfig}, a.dataDir)
	if err != nil {
		return err
	}
	defer closeKeys()
	r := &jwtsvid.Rotator{State: state, Keys: keys, PropagationDelay: a.propagation, TTL: a.ttl, Logger: log}
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
	printPhaseTimes(w, st.ActivateAfter, st.RetireAfter)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tKID\tNAME")
	for _, k := range st.Keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k.State, k.KeyID, k.Name)
	}
	return tw.Flush()
}
