package sds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent/svidstore"
)

// The resource names the server serves, as Istio's agent names them.
const (
	// DefaultSecretName is the Secret holding the workload's certificate
	// chain and private key (a tls_certificate).
	DefaultSecretName = "default"
	// RootCASecretName is the Secret holding the trusted CA bundle (a
	// validation_context).
	RootCASecretName = "ROOTCA"
	// AllBundlesSecretName is the validation_context holding the local
	// roots and the X.509 authorities of every federated trust domain, as
	// SPIRE's agent names it (default_all_bundles_name). ROOTCA keeps the
	// local roots only.
	AllBundlesSecretName = "ALL"
	// FederatedSecretPrefix starts the name of a federated trust domain's
	// validation_context: its trust domain ID, spiffe://<trust domain>, as
	// SPIRE's agent names it. Istio has no name of its own for them.
	FederatedSecretPrefix = "spiffe://"
)

// FederatedSecretName returns the resource name of the validation context
// of federated trust domain td.
func FederatedSecretName(td spiffeid.TrustDomain) string { return td.IDString() }

// SecretTypeURL is the xDS type URL of envoy.extensions.transport_sockets.tls.v3.Secret.
var SecretTypeURL = "type.googleapis.com/" + string((&tlsv3.Secret{}).ProtoReflect().Descriptor().FullName())

// knownNames lists the resources a wildcard subscription covers, sorted.
// The federated validation contexts and ALL are served by name only.
var knownNames = []string{RootCASecretName, DefaultSecretName}

// resourceState says whether a subscribed name can be served now.
type resourceState int

const (
	// stateReady: the resource exists and is returned.
	stateReady resourceState = iota
	// stateNotReady: the name is known but has no content yet (no SVID
	// issued, or the SVID expired).
	stateNotReady
	// stateUnknown: the server never serves this name.
	stateUnknown
)

// resource is one Secret built for one content version, shared by every
// stream that sends it.
type resource struct {
	name    string
	version string
	secret  *tlsv3.Secret
	any     *anypb.Any
}

// resourceCache builds each (name, version) Secret once, however many
// streams send it.
type resourceCache struct {
	mu  sync.Mutex
	res map[string]*resource
}

// lookup returns the resource called name in snap.
func (c *resourceCache) lookup(snap svidstore.Snapshot, name string) (*resource, resourceState, error) {
	var version string
	switch name {
	case DefaultSecretName:
		if snap.SVID == nil {
			return nil, stateNotReady, nil
		}
		version = snap.SVID.Version
	case RootCASecretName:
		if snap.Bundle == nil {
			return nil, stateNotReady, nil
		}
		version = snap.Bundle.Version
	case AllBundlesSecretName:
		if snap.Bundle == nil {
			return nil, stateNotReady, nil
		}
		version = snap.Bundle.Version
		if snap.Federated != nil {
			version += "+" + snap.Federated.Version
		}
	default:
		fb, known := federatedBundle(snap, name)
		switch {
		case !known:
			return nil, stateUnknown, nil
		case fb == nil || fb.X509 == nil:
			// Not (or no longer) federated, or without X.509
			// authorities: sent once it has some.
			return nil, stateNotReady, nil
		}
		version = fb.X509.Version
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.res[name]; r != nil && r.version == version {
		return r, stateReady, nil
	}
	r, err := buildResource(snap, name, version)
	if err != nil {
		return nil, stateNotReady, err
	}
	if c.res == nil {
		c.res = map[string]*resource{}
	}
	c.res[name] = r
	return r, stateReady, nil
}

// buildResource makes the Secret for name and checks it with the proto's
// own validation rules, the constraints Envoy enforces when it loads it.
func buildResource(snap svidstore.Snapshot, name, version string) (*resource, error) {
	var secret *tlsv3.Secret
	switch name {
	case DefaultSecretName:
		secret = &tlsv3.Secret{
			Name: name,
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline(snap.SVID.ChainPEM),
				PrivateKey:       inline(snap.SVID.KeyPEM),
			}},
		}
	case RootCASecretName:
		secret = validationContext(name, snap.Bundle.PEM)
	case AllBundlesSecretName:
		pem := append([]byte(nil), snap.Bundle.PEM...)
		if snap.Federated != nil {
			for _, fb := range snap.Federated.Bundles {
				if fb.X509 != nil {
					pem = append(pem, fb.X509.PEM...)
				}
			}
		}
		secret = validationContext(name, pem)
	default:
		fb, _ := federatedBundle(snap, name)
		secret = validationContext(name, fb.X509.PEM)
	}
	if err := secret.ValidateAll(); err != nil {
		return nil, fmt.Errorf("sds: secret %q failed validation: %w", name, err)
	}
	a, err := anypb.New(secret)
	if err != nil {
		return nil, fmt.Errorf("sds: could not encode secret %q: %w", name, err)
	}
	return &resource{name: name, version: version, secret: secret, any: a}, nil
}

func validationContext(name string, pem []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(pem),
		}},
	}
}

// federatedBundle returns the federated bundle a resource name names. known
// is false when name is not the name of a trust domain ID at all.
func federatedBundle(snap svidstore.Snapshot, name string) (fb *svidstore.FederatedBundle, known bool) {
	if !strings.HasPrefix(name, FederatedSecretPrefix) {
		return nil, false
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || td.IDString() != name {
		return nil, false
	}
	return snap.Federated.Lookup(td), true
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// combinedVersion names a set of resource versions, for a state-of-the-world
// response's version_info.
func combinedVersion(rs []*resource) string {
	if len(rs) == 1 {
		return rs[0].version
	}
	h := sha256.New()
	for _, r := range rs {
		fmt.Fprintf(h, "%s=%s;", r.name, r.version)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type snapshot = svidstore.Snapshot

// lookup returns the resource called name in snap, from cache. A Secret
// that fails validation is logged, counted and treated as not ready: it is
// never sent.
func (s *Server) lookup(cache *resourceCache, snap snapshot, name string) (*resource, resourceState) {
	r, state, err := cache.lookup(snap, name)
	if err != nil {
		s.metrics.invalidSecrets.Inc()
		s.log.Error("sds: not serving invalid secret", "name", name, "error", err)
	}
	return r, state
}
