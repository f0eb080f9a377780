package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/upstream"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// rotateSteps are the steps of "castellan ca rotate", with what each says
// in its --help.
var rotateSteps = map[string]string{
	"prepare":  "Create the next root (or take it with --from) and add it to the trust bundle;\nnothing is signed with it yet.",
	"activate": "Sign with the prepared root, once --root-propagation-delay has passed since\nprepare (or with --force).",
	"retire":   "Drop the old root from the trust bundle, once the SVIDs it signed have\nexpired (--max-ttl after activate, plus a margin; or with --force).",
	"status":   "Print the rotation phase and the roots in the trust bundle.",
}

// rotateUsage is the usage of "castellan ca rotate" without a step.
const rotateUsage = `Usage:
  castellan ca rotate prepare|activate|retire|status [flags]

Rotate the CA's root in three steps, whatever the CA mode: a data directory
(self-signed or plugged-in), an upstream-signed intermediate, or a
Kubernetes Secret. Each step prints the status after it.

  prepare   a new root joins the trust bundle
  activate  new SVIDs chain to the new root
  retire    the old root leaves the trust bundle
  status    print the phase and the roots

Run "castellan ca rotate STEP --help" for a step's flags.
`

// runCARotate is "castellan ca rotate prepare|activate|retire|status", the
// same for every CA mode: a data directory (self-signed or plugged-in), an
// upstream-signed intermediate, or a Kubernetes Secret.
func runCARotate(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	if len(args) == 0 {
		fmt.Fprint(stderr, rotateUsage)
		return usageError{Err: errors.New("a step is required: prepare, activate, retire or status")}
	}
	step := args[0]
	if step == "-h" || step == "--help" || step == "help" {
		fmt.Fprint(stdout, rotateUsage)
		return nil
	}
	summary, ok := rotateSteps[step]
	if !ok {
		return usageError{Err: fmt.Errorf("unknown rotate step %q: want prepare, activate, retire or status", step)}
	}
	fs := cliflag.NewFlagSet("castellan ca rotate "+step, cliflag.Help{Summary: summary}, stdout, stderr)
	out := cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = out.Errors(err) }()
	dataDir := fs.String("data-dir", "/var/lib/castellan", "the CA's data directory")
	propagation := fs.Duration("root-propagation-delay", time.Hour, "time a prepared root must sit in the bundle before it may sign")
	maxTTL := fs.Duration("max-ttl", 24*time.Hour, "the CA's longest SVID lifetime (the old root is kept that long after activation)")
	var k kmsFlags
	var kube kubeFlags
	fs.StringVar(&kube.material, "material", materialDir, "where the CA material lives: dir (--data-dir) or kubernetes (the CA Secret)")
	fs.StringVar(&kube.namespace, "namespace", envOr("POD_NAMESPACE", "castellan-system"), "namespace of the CA Secret, with --material=kubernetes")
	fs.StringVar(&kube.secretName, "secret-name", kubestore.DefaultSecretName, "the CA Secret, with --material=kubernetes")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig, with --material=kubernetes (default: $KUBECONFIG, else the in-cluster config)")
	cliflag.StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	fs.StringVar(&k.upstream, "upstream", "", `"vault" for a CA whose intermediate Vault's PKI engine signs (found from --data-dir when empty)`)
	var (
		trustDomain = "cluster.local"
		rootTTL     = 10 * 365 * 24 * time.Hour
		from        string
		force       bool
	)
	k.keyAlg = "ecdsa-p256"
	switch step {
	case "prepare":
		fs.StringVar(&trustDomain, "trust-domain", trustDomain, "trust domain named in the new root")
		fs.DurationVar(&rootTTL, "root-ttl", rootTTL, "lifetime of the new root (self-signed, or created in Vault)")
		fs.StringVar(&from, "from", "", "for a plugged-in CA, the directory holding the next cacerts; for an upstream-signed CA, the Vault issuer (name or ID) of the next root (default: a new root created in the PKI mount)")
		fs.StringVar(&k.keyURI, "signer-key-uri", "", "the self-signed root's key store, as given to \"castellan ca\" (pkcs11:..., vault-transit://...), with --data-dir or --material=kubernetes; the next root's key is created there")
		fs.StringVar(&k.keyAlg, "signer-key-algorithm", k.keyAlg, "algorithm of the next root's key in --signer-key-uri's store")
		k.registerVault(fs)
	case "activate", "retire":
		fs.BoolVar(&force, "force", false, step+" before it is known to be safe")
	}
	jwtRotate := fs.Bool("jwt", false, "rotate the JWT-SVID signing key instead of the root, with the same steps")
	jwtTTL := fs.Duration("jwt-svid-ttl", jwtsvid.DefaultTTL, "with --jwt: the CA's JWT-SVID lifetime (the previous JWT key stays published that long after activation)")
	if step != "prepare" {
		fs.StringVar(&k.keyURI, "signer-key-uri", "", "with --jwt: the key store of the CA's JWT keys, as given to \"castellan ca\" (default: files in --data-dir)")
		k.registerVault(fs)
	}
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args[1:], nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *jwtRotate {
		return runJWTRotate(ctx, jwtRotateArgs{step: step, dataDir: *dataDir, propagation: *propagation, ttl: *jwtTTL, force: force, kms: &k, kube: &kube, kubeconfig: *kubeconfig}, out, stdout, stderr)
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return usageError{Err: fmt.Errorf("--trust-domain %q: %w", trustDomain, err)}
	}
	log := cliflag.NewCLILogger(stderr)
	r := &rotation.Engine{Policy: rotation.Policy{PropagationDelay: *propagation, MaxTTL: *maxTTL}, Logger: log}
	isUpstream := upstreamDir(*dataDir)
	var keys rotation.KeyStore
	if k.keyURI != "" && step == "prepare" && k.upstream == "" && !isUpstream {
		// The self-signed root's key store, whatever holds the
		// certificates: the next root's key is created there.
		ring, err := k.openRing(ctx, &caDeps{log: log, reg: prometheus.NewRegistry()})
		if err != nil {
			return err
		}
		defer ring.Close()
		keys = ring
	}
	switch {
	case kube.material != materialDir && kube.material != materialKubernetes:
		return usageError{Err: fmt.Errorf("--material %q: want %s or %s", kube.material, materialDir, materialKubernetes)}
	case kube.material == materialKubernetes:
		client, err := (&caDeps{kubeconfig: *kubeconfig}).kubeClient()
		if err != nil {
			return fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
		}
		r.Backend = &kubestore.SecretBackend{Client: client, Namespace: kube.namespace, SecretName: kube.secretName, TrustDomain: td, RootTTL: rootTTL, Keys: keys}
	case k.upstream != "" && k.upstream != "vault":
		return usageError{Err: fmt.Errorf("--upstream %q: want vault, or empty", k.upstream)}
	case k.upstream == "vault" || isUpstream:
		if !isUpstream {
			return fmt.Errorf("%s holds no upstream-signed intermediate (%s); start the CA with --upstream=vault first", *dataDir, upstream.ChainFile)
		}
		b := &upstream.Backend{Dir: *dataDir, TrustDomain: td, RootTTL: rootTTL, Logger: log}
		if step == "prepare" {
			client, err := k.vaultClient(&caDeps{log: log, reg: prometheus.NewRegistry()})
			if err != nil {
				return err
			}
			b.Upstream = &upstream.VaultPKI{Client: client, Mount: k.pkiMount}
		}
		r.Backend = b
	default:
		r.Backend = &material.Backend{Dir: *dataDir, TrustDomain: td, RootTTL: rootTTL, Keys: keys}
	}
	switch step {
	case "prepare":
		err = r.Prepare(ctx, from)
	case "activate":
		err = r.Activate(ctx, force)
	case "retire":
		err = r.Retire(ctx, force)
	case "status":
	default:
		return usageError{Err: fmt.Errorf("unknown rotate step %q: want prepare, activate, retire or status", step)}
	}
	if err != nil {
		return err
	}
	st, err := r.Status(ctx)
	if err != nil {
		return err
	}
	return out.Write(stdout, st, func(w io.Writer) error {
		printRotation(w, st)
		return nil
	})
}

// openRing opens the key store --signer-key-uri names.
func (k *kmsFlags) openRing(ctx context.Context, d *caDeps) (*kms.Ring, error) {
	alg, err := kms.ParseAlgorithm(k.keyAlg)
	if err != nil {
		return nil, usageError{Err: fmt.Errorf("--signer-key-algorithm: %w", err)}
	}
	u, err := kms.ParseURI(k.keyURI)
	if err != nil {
		return nil, usageError{Err: fmt.Errorf("--signer-key-uri: %w", err)}
	}
	cfg := kms.Config{Logger: d.log}
	if u.Scheme == kms.SchemeVaultTransit {
		if cfg.Vault, err = k.vaultClient(d); err != nil {
			return nil, err
		}
	}
	return kms.NewRing(ctx, k.keyURI, alg, cfg)
}

// upstreamDir reports whether dir holds an upstream-signed intermediate.
func upstreamDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, upstream.ChainFile))
	return err == nil
}

// printPhaseTimes prints when the next steps of a rotation are due, those
// that are.
func printPhaseTimes(w io.Writer, activateAfter, retireAfter time.Time) {
	if !activateAfter.IsZero() {
		fmt.Fprintf(w, "activate after  %s\n", activateAfter.Format(time.RFC3339))
	}
	if !retireAfter.IsZero() {
		fmt.Fprintf(w, "retire after    %s\n", retireAfter.Format(time.RFC3339))
	}
}

func printRotation(w io.Writer, st *rotation.Status) {
	fmt.Fprintf(w, "mode   %s\nphase  %s\n", st.Mode, st.Phase)
	if st.Issuer != "" {
		fmt.Fprintf(w, "issuer          %s\n", st.Issuer)
	}
	if st.NextIssuer != "" {
		fmt.Fprintf(w, "next issuer     %s\n", st.NextIssuer)
	}
	printPhaseTimes(w, st.ActivateAfter, st.RetireAfter)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tSERIAL\tNOT AFTER\tSUBJECT")
	for _, r := range st.Roots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.State, r.Serial, r.NotAfter.Format(time.RFC3339), r.Subject)
	}
	tw.Flush()
}
