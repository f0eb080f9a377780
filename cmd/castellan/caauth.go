package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/ca/saindex"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// authFlags are the flags of "castellan ca" that govern token checks and
// what one caller may cost the CA.
type authFlags struct {
	kubeQPS              float64
	kubeBurst            int
	maxConcurrentReviews int
	precheck             bool
	offlineBound         bool
	watchRevocation      bool
	pprofAddr            string

	maxConns, maxConnsPerPeer int
	failRate                  float64
	failBurst                 int
}

func (f *authFlags) register(fs *pflag.FlagSet) {
	fs.Float64Var(&f.kubeQPS, "kube-api-qps", 200, "requests per second the CA's Kubernetes client may send (TokenReviews, key and watch requests)")
	fs.IntVar(&f.kubeBurst, "kube-api-burst", 400, "burst of requests above --kube-api-qps")
	fs.IntVar(&f.maxConcurrentReviews, "max-concurrent-reviews", 32, "TokenReviews in flight at once; more wait")
	fs.BoolVar(&f.precheck, "token-precheck", true, "check service-account tokens offline (signature against the cluster issuer's keys from OIDC discovery, issuer, audience, expiry) before any TokenReview")
	fs.BoolVar(&f.offlineBound, "offline-bound-tokens", true, "accept a pod-bound or unbound token that passes the offline checks without a TokenReview when the CA's watch caches hold its service account and pod with the UIDs it names (false: review every new token)")
	fs.BoolVar(&f.watchRevocation, "watch-revocation", true, "watch service accounts and pods (list/watch, cluster-wide) so that a cached token stops being accepted as soon as its service account or pod is deleted; needed by --offline-bound-tokens")
	fs.StringVar(&f.pprofAddr, "pprof-addr", "127.0.0.1:15016", "loopback listen address of /debug/pprof/ when --pprof is set")
	fs.IntVar(&f.maxConns, "max-connections", 4096, "open connections to the certificate service; more are closed at once")
	fs.IntVar(&f.maxConnsPerPeer, "max-connections-per-peer", 64, "open connections from one IP address")
	fs.Float64Var(&f.failRate, "peer-auth-failure-rate", 5, "failed authentications per second allowed to one IP address; past it (and the burst) its calls get ResourceExhausted")
	fs.IntVar(&f.failBurst, "peer-auth-failure-burst", 50, "failed authentications one IP address may have at once")
}

// limits are the server limits the flags set.
func (f *authFlags) limits() server.Limits {
	return server.Limits{
		MaxConnections: f.maxConns, MaxConnectionsPerPeer: f.maxConnsPerPeer,
		PeerFailureRate: f.failRate, PeerFailureBurst: f.failBurst,
	}
}

// authenticator builds the token checks the flags ask for, behind one
// cache; the watch caches they need join d.runners.
func (f *caFlags) authenticator(ctx context.Context, d *caDeps) (authn.Authenticator, error) {
	var fallback authn.Authenticator
	var stillValid func(authn.Caller) bool
	if f.tokenReview {
		cfg, err := kubeConfig(d.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("TokenReview needs a cluster (set --kubeconfig, run in a pod, or pass --token-review=false): %w", err)
		}
		if f.auth.kubeQPS <= 0 || f.auth.kubeBurst <= 0 {
			return nil, usageError{Err: errors.New("--kube-api-qps and --kube-api-burst must be positive")}
		}
		cfg.QPS, cfg.Burst = float32(f.auth.kubeQPS), f.auth.kubeBurst
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: client, Audiences: f.audiences.Values(), Registerer: d.reg})
		if err != nil {
			return nil, err
		}
		fallback = tr
		if f.auth.precheck {
			sat, err := f.serviceAccountTokens(ctx, d, client, tr)
			if err != nil {
				return nil, err
			}
			fallback, stillValid = sat, sat.StillValid
		}
	}
	issuers := map[string]authn.Authenticator{}
	// Offline JWTs belong to no cluster: only the local cluster takes them.
	if (f.jwtIssuer != "" || f.jwksFile != "") && d.remoteCluster == "" {
		if f.jwtIssuer == "" {
			return nil, usageError{Err: errors.New("--jwks-file needs --jwt-issuer")}
		}
		j, err := authn.NewJWT(ctx, authn.JWTConfig{Issuer: f.jwtIssuer, Audiences: f.audiences.Values(), JWKSFile: f.jwksFile})
		if err != nil {
			return nil, err
		}
		issuers[f.jwtIssuer] = j
	}
	if fallback == nil && len(issuers) == 0 {
		return nil, usageError{Err: errors.New("no authenticator: enable --token-review or set --jwt-issuer")}
	}
	return authn.NewCache(authn.NewByIssuer(issuers, fallback), authn.CacheConfig{MaxTTL: f.authCacheTTL, StillValid: stillValid, Registerer: d.reg})
}

// serviceAccountTokens builds the offline checks in front of TokenReview,
// with the watch caches when --offline-bound-tokens is set.
func (f *caFlags) serviceAccountTokens(ctx context.Context, d *caDeps, client kubernetes.Interface, review authn.Authenticator) (*authn.ServiceAccountTokens, error) {
	cfg := authn.ServiceAccountConfig{
		Client: client.CoreV1().RESTClient(), Audiences: f.audiences.Values(), Review: review,
		MaxConcurrentReviews: f.auth.maxConcurrentReviews, Registerer: d.reg,
		AlwaysReview: !f.auth.offlineBound,
	}
	if f.auth.offlineBound && !f.auth.watchRevocation {
		return nil, usageError{Err: errors.New("--offline-bound-tokens needs --watch-revocation (set --offline-bound-tokens=false to review every token)")}
	}
	if f.auth.watchRevocation {
		sas, err := saindex.New(saindex.Config{Client: client, Registerer: d.reg})
		if err != nil {
			return nil, err
		}
		pods, err := d.podIndex()
		if err != nil {
			return nil, err
		}
		cfg.ServiceAccounts, cfg.Pods = sas, pods
		d.runners = append(d.runners, sas.Run)
	}
	sat, err := authn.NewServiceAccountTokens(cfg)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := sat.Load(lctx); err != nil {
		d.log.Warn("service-account issuer keys not loaded yet; tokens are refused as unavailable until they are", "error", err)
	} else {
		d.log.Info("checking service-account tokens offline before TokenReview", "issuer", sat.Issuer(), "offline_bound_tokens", f.auth.offlineBound)
	}
	return sat, nil
}

// podIndex returns the CA's one pod index, created on first use with its
// Run added to d.runners; token checks and node-agent authorization share
// it.
func (d *caDeps) podIndex() (*nodeauth.PodIndex, error) {
	if d.pods != nil {
		return d.pods, nil
	}
	cfg, err := kubeConfig(d.kubeconfig)
	if err != nil {
		return nil, err
	}
	// Pods are many and large: list and watch them as protobuf.
	cfg = rest.CopyConfig(cfg)
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	pods, err := nodeauth.NewPodIndex(nodeauth.PodIndexConfig{Client: client, Registerer: d.reg})
	if err != nil {
		return nil, err
	}
	d.pods = pods
	d.runners = append(d.runners, pods.Run)
	return pods, nil
}
