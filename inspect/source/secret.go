package source

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/pemder"
	"github.com/castellan-mesh/castellan/internal/cacerts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// Secret key names, in order of preference: kubernetes.io/tls Secrets, Istio's
// cacerts (plugged-in CA) Secret, and Istio's generic gateway Secret.
var (
	secretChainKeys  = []string{"tls.crt", cacerts.CertChainFile, cacerts.CACertFile, "cert"}
	secretBundleKeys = []string{"ca.crt", cacerts.RootCertFile, "cacert"}
	secretKeyKeys    = map[string]string{
		"tls.crt":             "tls.key",
		cacerts.CertChainFile: cacerts.CAKeyFile,
		cacerts.CACertFile:    cacerts.CAKeyFile,
		"cert":                "key",
	}
)

// Secret loads the chain, bundle and key held by the Secret namespace/name.
// The chain comes from the first present of tls.crt, cert-chain.pem,
// ca-cert.pem and cert; the bundle from ca.crt, root-cert.pem or cacert; the
// key (only its public half is kept) from the key that goes with the chain
// (tls.key, ca-key.pem or key).
func Secret(ctx context.Context, secrets corev1client.SecretsGetter, namespace, name string) (inspect.Input, error) {
	ref := namespace + "/" + name
	s, err := secrets.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: getting Secret %s: %w", ref, err)
	}
	chainKey := firstKey(s.Data, secretChainKeys)
	if chainKey == "" {
		keys := make([]string, 0, len(s.Data))
		for k := range s.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return inspect.Input{}, fmt.Errorf("source: Secret %s has none of the keys %s (it has: %s)",
			ref, strings.Join(secretChainKeys, ", "), orNothing(keys))
	}
	certs, err := pemder.ParseCertificates(s.Data[chainKey])
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: Secret %s key %s: %w", ref, chainKey, err)
	}
	in := inspect.Input{Source: fmt.Sprintf("secret:%s[%s]", ref, chainKey), Chain: certs}
	if k := firstKey(s.Data, secretBundleKeys); k != "" {
		bundle, err := pemder.ParseCertificates(s.Data[k])
		if err != nil {
			return inspect.Input{}, fmt.Errorf("source: Secret %s key %s: %w", ref, k, err)
		}
		in.Bundle, in.BundleSource = bundle, fmt.Sprintf("secret:%s[%s]", ref, k)
	}
	if k := secretKeyKeys[chainKey]; len(s.Data[k]) > 0 {
		pub, err := pemder.ParseKey(s.Data[k])
		if err != nil {
			return inspect.Input{}, fmt.Errorf("source: Secret %s key %s: %w", ref, k, err)
		}
		in.PublicKey, in.KeySource = pub, fmt.Sprintf("secret:%s[%s]", ref, k)
	}
	if s.Type != "" {
		in.Notes = append(in.Notes, "Secret type "+string(s.Type))
	}
	return in, nil
}

// Kubeconfig returns the Secrets client for the kubeconfig file at path (empty
// means $KUBECONFIG, then ~/.kube/config) and the named context (empty means
// the current one), and the namespace that context defaults to.
func Kubeconfig(path, context string) (corev1client.SecretsGetter, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("source: loading kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("source: kubeconfig namespace: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, "", fmt.Errorf("source: Kubernetes client: %w", err)
	}
	return cs.CoreV1(), ns, nil
}

func firstKey(data map[string][]byte, keys []string) string {
	for _, k := range keys {
		if len(data[k]) > 0 {
			return k
		}
	}
	return ""
}

func orNothing(keys []string) string {
	if len(keys) == 0 {
		return "no data"
	}
	return strings.Join(keys, ", ")
}
