package main

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/trust"
	"github.com/spf13/pflag"
)

// Values of --material.
const (
	materialDir        = "dir"
	materialKubernetes = "kubernetes"
)

// kubeFlags select CA material kept in Kubernetes (a Secret shared by
// replicas, created under a Lease) and trust-bundle distribution.
type kubeFlags struct {
	material, namespace, secretName, leaseName, podName string
	trustConfigMap, trustKey, clusterTrustBundle        string
	trustDistribution                                   bool
	trustExclude                                        *cliflag.StringList
	leaseDuration, renewDeadline, retryPeriod           time.Duration
}

func (k *kubeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.material, "material", materialDir, "where the CA material lives: dir (--data-dir) or kubernetes (a Secret shared by all replicas)")
	fs.StringVar(&k.namespace, "namespace", envOr("POD_NAMESPACE", "castellan-system"), "namespace of the CA Secret and Lease, with --material=kubernetes ($POD_NAMESPACE when set)")
	fs.StringVar(&k.secretName, "secret-name", kubestore.DefaultSecretName, "Secret holding the CA material (Istio's cacerts keys: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)")
	fs.StringVar(&k.leaseName, "lease-name", kubestore.DefaultLeaseName, "Lease the replicas elect a leader with")
	fs.StringVar(&k.podName, "pod-name", os.Getenv("POD_NAME"), "this replica's name in the Lease (default $POD_NAME, else the host name)")
	fs.DurationVar(&k.leaseDuration, "lease-duration", kubestore.DefaultLeaseDuration, "leader election: how long a Lease holds without renewal")
	fs.DurationVar(&k.renewDeadline, "renew-deadline", kubestore.DefaultRenewDeadline, "leader election: how long the leader tries to renew before giving up")
	fs.DurationVar(&k.retryPeriod, "retry-period", kubestore.DefaultRetryPeriod, "leader election: wait between attempts")
	fs.BoolVar(&k.trustDistribution, "trust-distribution", true, "with --material=kubernetes, the leader publishes the trust bundle to a ConfigMap in every namespace")
	fs.StringVar(&k.trustConfigMap, "trust-configmap", trust.DefaultConfigMapName, "name of the trust bundle ConfigMap in each namespace")
	fs.StringVar(&k.trustKey, "trust-configmap-key", trust.DefaultKey, "key of the trust bundle in the ConfigMap")
	k.trustExclude = cliflag.NewStringList()
	fs.Var(k.trustExclude, "trust-exclude-namespace", "namespace that gets no trust bundle ConfigMap (repeatable)")
	fs.StringVar(&k.clusterTrustBundle, "cluster-trust-bundle", "", "also publish the trust bundle as a ClusterTrustBundle of this name, when the API server serves certificates.k8s.io/v1beta1 (default: none)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// source returns Kubernetes-backed signing material, or nil when the flags
// keep the material in the data directory. Background jobs (leader
// election, trust distribution) go in d.runners.
//
// keys, when --signer-key-uri names the root key, is its key store: the
// leader creates the next root's key there.
//
// It returns once the material is loaded from the Secret (created by the
// leader on first install), so that the server starts with it.
func (k *kubeFlags) source(ctx context.Context, d *caDeps, signer crypto.Signer, keys rotation.KeyStore) (ca.Source, error) {
	switch k.material {
	case materialDir:
		return nil, nil
	case materialKubernetes:
	default:
		return nil, usageError{Err: fmt.Errorf("--material %q: want %s or %s", k.material, materialDir, materialKubernetes)}
	}
	client, err := d.kubeClient()
	if err != nil {
		return nil, fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
	}

	var (
		store *kubestore.Store
		ctrl  *trust.Controller
	)
	cfg := kubestore.Config{
		Client:        client,
		Namespace:     k.namespace,
		SecretName:    k.secretName,
		LeaseName:     k.leaseName,
		Identity:      k.podName,
		TrustDomain:   d.trustDomain,
		RootTTL:       d.rootTTL,
		Signer:        signer,
		Keys:          keys,
		LeaseDuration: k.leaseDuration,
		RenewDeadline: k.renewDeadline,
		RetryPeriod:   k.retryPeriod,
		Logger:        d.log.With("component", "kubestore"),
		Registerer:    d.reg,
	}
	if k.trustDistribution {
		ctrl, err = trust.New(trust.Config{
			Client: client,
			Bundle: func() []byte {
				if a := store.Authority(); a != nil {
					return a.BundlePEM()
				}
				return nil
			},
			ConfigMapName:          k.trustConfigMap,
			Key:                    k.trustKey,
			Extra:                  federatedConfigMapData(d),
			ExcludeNamespaces:      k.trustExclude.Values(),
			ClusterTrustBundleName: k.clusterTrustBundle,
			Logger:                 d.log.With("component", "trust"),
			Registerer:             d.reg,
		})
		if err != nil {
			return nil, usageError{Err: err}
		}
		// The controller publishes the bundle when it starts, then after
		// each change of the Secret's material (or of the federated
		// bundles).
		cfg.LeaderJobs = append(cfg.LeaderJobs, ctrl.Run, func(ctx context.Context) error {
			return follow(ctx, func() <-chan struct{} { return store.Changed() }, ctrl.BundleChanged)
		})
		if d.federated != nil {
			cfg.LeaderJobs = append(cfg.LeaderJobs, func(ctx context.Context) error {
				return follow(ctx, func() <-chan struct{} { _, ch := d.federated.Document(); return ch }, ctrl.BundleChanged)
			})
		}
	}
	store, err = kubestore.New(cfg)
	if err != nil {
		return nil, usageError{Err: err}
	}

	run, err := store.Start(ctx)
	if err != nil {
		return nil, err
	}
	d.runners = append(d.runners, run)
	// Shared with the data-dir mode: the leader rotates a root it created
	// as "castellan ca" does one in --data-dir.
	d.rotation = store.Rotation(d.policy)
	return store, nil
}
