package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Defaults for ServiceAccountConfig.
const (
	defaultMaxConcurrentReviews = 32
	// clusterKeyAge is how long the cluster's service-account keys are
	// used before they are fetched again (in the background): a key the
	// cluster stops publishing stops verifying tokens within this time.
	clusterKeyAge = time.Minute
)

// ObjectIndex answers from a watch cache whether a Kubernetes object
// exists. It must be safe for concurrent use and must not block.
type ObjectIndex interface {
	// LiveUID returns the UID of the object namespace/name, and false when
	// the cache holds no such object or the object is being deleted.
	LiveUID(namespace, name string) (uid string, ok bool)
}

// ServiceAccountConfig configures a ServiceAccountTokens authenticator.
type ServiceAccountConfig struct {
	// Client reaches the API server, with the CA's own credentials. The
	// service-account issuer and its keys are read through it by OIDC
	// discovery (/.well-known/openid-configuration and /openid/v1/jwks;
	// Kubernetes grants both to every service account through the
	// system:service-account-issuer-discovery role). Required.
	Client rest.Interface
	// Audiences are the accepted token audiences. Required.
	Audiences []string
	// Review checks a token that passed the offline checks against the
	// API server, normally a *TokenReview. Required.
	Review Authenticator
	// MaxConcurrentReviews bounds the reviews in flight; a caller waits
	// for a slot as long as its context allows. Zero means 32.
	MaxConcurrentReviews int
	// ServiceAccounts and Pods, when both are set, let a token skip the
	// review: a token bound to no object or to a pod, whose service
	// account (and pod) the caches hold with the UIDs the token names, is
	// accepted offline, since that is what a TokenReview would check. Any
	// other token is reviewed. They also let a cached success be revoked:
	// see StillValid.
	ServiceAccounts, Pods ObjectIndex
	// AlwaysReview sends every token that passes the offline checks to
	// Review, even when the caches confirm it; the caches then only serve
	// StillValid.
	AlwaysReview bool
	// Leeway is the clock skew allowed when checking exp and nbf. Zero
	// means 30s.
	Leeway time.Duration
	// Registerer receives castellan_authn_token_checks_total and
	// castellan_tokenreviews_in_flight. Nil means they are not exported.
	Registerer prometheus.Registerer
}

// ServiceAccountTokens authenticates the cluster's own service-account
// tokens. Every token is first checked offline, as the API server would:
// its shape, its signature against the cluster issuer's published keys,
// its issuer, audience and validity period. A token that fails never
// costs an API call, so junk tokens cannot crowd out real ones. A token
// that passes is reviewed (bounded by MaxConcurrentReviews), or accepted
// from the watch caches (see ServiceAccountConfig.ServiceAccounts).
type ServiceAccountTokens struct {
	jwt          *JWT
	keys         *remoteKeys
	review       Authenticator
	slots        chan struct{}
	sas          ObjectIndex
	pods         ObjectIndex
	alwaysReview bool
	checks       *prometheus.CounterVec
	waiting      prometheus.Gauge
}

// NewServiceAccountTokens returns a ServiceAccountTokens for cfg. It does
// not contact the API server; call Load to fetch the keys up front.
func NewServiceAccountTokens(cfg ServiceAccountConfig) (*ServiceAccountTokens, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("authn: service-account tokens need an API server client")
	case cfg.Review == nil:
		return nil, errors.New("authn: service-account tokens need a reviewer")
	case len(cfg.Audiences) == 0:
		return nil, errors.New("authn: service-account tokens need at least one audience")
	case slices.Contains(cfg.Audiences, ""):
		return nil, errors.New("authn: token audience must not be empty")
	}
	leeway := leewayOf(cfg.Leeway)
	n := cfg.MaxConcurrentReviews
	if n <= 0 {
		n = defaultMaxConcurrentReviews
	}
	keys := newRefreshingKeys(&apiServerFetcher{client: cfg.Client}, clusterKeyAge)
	f := promreg.WithShared(cfg.Registerer)
	checks := f.CounterVec("castellan_authn_token_checks_total",
		"Service-account tokens checked, by outcome: refused_offline (shape, signature, issuer, audience or time; no API call), accepted_offline (the watch caches confirm its service account and pod), reviewed (a TokenReview was sent).",
		"outcome")
	waiting := f.Gauge("castellan_tokenreviews_in_flight", "TokenReviews in flight or waiting for one of the slots that bound them.")
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	s := &ServiceAccountTokens{
		jwt:          &JWT{audiences: slices.Clone(cfg.Audiences), leeway: leeway, keys: keys, now: time.Now},
		keys:         keys,
		review:       cfg.Review,
		slots:        make(chan struct{}, n),
		alwaysReview: cfg.AlwaysReview,
		checks:       checks, waiting: waiting,
	}
	if cfg.ServiceAccounts != nil && cfg.Pods != nil {
		s.sas, s.pods = cfg.ServiceAccounts, cfg.Pods
	}
	return s, nil
}

// Load fetches the cluster issuer's name and keys now, for start-up. The
// keys are fetched again whenever they are needed and missing, so an
// error here is not fatal.
func (s *ServiceAccountTokens) Load(ctx context.Context) error {
	_, err := s.keys.load(ctx, false)
	return err
}

// Issuer returns the cluster's service-account issuer, or "" before the
// keys were loaded.
func (s *ServiceAccountTokens) Issuer() string { return s.keys.issuer() }

// Authenticate checks token offline, then with the watch caches or a
// TokenReview, and returns its service account.
func (s *ServiceAccountTokens) Authenticate(ctx context.Context, token string) (Caller, error) {
	claims, err := s.jwt.check(ctx, token)
	if err == nil && (claims.Kubernetes == nil || claims.Kubernetes.ServiceAccount == nil || claims.Kubernetes.ServiceAccount.UID == "") {
		err = Errorf(ReasonNotServiceAccount, "token has no kubernetes.io service account claims; it was not issued by the cluster for a service account")
	}
	var caller Caller
	if err == nil {
		caller, err = claims.caller()
	}
	if err != nil {
		if ReasonOf(err) != ReasonUnavailable {
			s.checks.WithLabelValues("refused_offline").Inc()
		}
		return Caller{}, err
	}
	// caller() already took the pod binding from the claims, all or
	// nothing (a pod name without its UID is no binding).
	caller.ServiceAccountUID = claims.Kubernetes.ServiceAccount.UID
	if s.confirmed(claims, caller) {
		s.checks.WithLabelValues("accepted_offline").Inc()
		return caller, nil
	}
	return s.reviewed(ctx, token, caller)
}

// confirmed reports whether the watch caches show the objects token is
// bound to as it names them, so that a review would say the same.
func (s *ServiceAccountTokens) confirmed(claims *tokenClaims, caller Caller) bool {
	k := claims.Kubernetes
	switch {
	case s.sas == nil, s.alwaysReview:
		return false
	case k.Secret != nil, k.Node != nil && k.Pod == nil:
		// Secret- and node-bound tokens are left to the API server.
		return false
	case k.Pod != nil && (k.Pod.Name == "" || k.Pod.UID == ""):
		return false
	}
	return s.StillValid(caller)
}

// StillValid reports whether the watch caches still show caller's service
// account, and its pod for a pod-bound token, with the UIDs its token
// named. It is true when there are no caches, or for a caller whose token
// named no UID (another issuer's). A Cache uses it to drop a remembered
// success as soon as the service account or pod is deleted.
func (s *ServiceAccountTokens) StillValid(caller Caller) bool {
	if s.sas == nil || caller.ServiceAccountUID == "" {
		return true
	}
	if uid, ok := s.sas.LiveUID(caller.Namespace, caller.ServiceAccount); !ok || uid != caller.ServiceAccountUID {
		return false
	}
	if caller.PodUID == "" {
		return true
	}
	uid, ok := s.pods.LiveUID(caller.Namespace, caller.PodName)
	return ok && uid == caller.PodUID
}

// reviewed sends token to the reviewer, within the concurrency bound, and
// checks that its answer agrees with the token's verified claims.
func (s *ServiceAccountTokens) reviewed(ctx context.Context, token string, claimed Caller) (Caller, error) {
	s.waiting.Inc()
	defer s.waiting.Dec()
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return Caller{}, &Error{Reason: ReasonUnavailable, Err: fmt.Errorf("no TokenReview slot free (%d in flight): %w", cap(s.slots), context.Cause(ctx))}
	}
	defer func() { <-s.slots }()
	s.checks.WithLabelValues("reviewed").Inc()
	got, err := s.review.Authenticate(ctx, token)
	if err != nil {
		return Caller{}, err
	}
	if got.Namespace != claimed.Namespace || got.ServiceAccount != claimed.ServiceAccount {
		return Caller{}, Errorf(ReasonInvalid, "the API server names %s/%s for a token whose claims name %s/%s", got.Namespace, got.ServiceAccount, claimed.Namespace, claimed.ServiceAccount)
	}
	// The review confirmed the token, so its signed claims hold; keep
	// what the review reported and fill in what it did not.
	if got.ServiceAccountUID == "" {
		got.ServiceAccountUID = claimed.ServiceAccountUID
	}
	if got.PodUID == "" && got.PodName == "" {
		got.PodName, got.PodUID = claimed.PodName, claimed.PodUID
	}
	if got.NodeName == "" {
		got.NodeName = claimed.NodeName
	}
	return got, nil
}

// String describes the authenticator for logs.
func (s *ServiceAccountTokens) String() string {
	return fmt.Sprintf("ServiceAccountTokens(issuer=%q)", s.Issuer())
}

// apiServerFetcher reads the service-account issuer's discovery document
// and key set from the API server itself, with the CA's credentials; the
// issuer URL itself need not be reachable from the CA.
type apiServerFetcher struct {
	client rest.Interface
}

func (a *apiServerFetcher) String() string { return "the API server's service-account issuer" }

func (a *apiServerFetcher) fetch(ctx context.Context) (string, *jose.JSONWebKeySet, error) {
	const discovery, jwks = "/.well-known/openid-configuration", "/openid/v1/jwks"
	data, err := a.get(ctx, discovery)
	if err != nil {
		return "", nil, err
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", nil, fmt.Errorf("API server %s: %w", discovery, err)
	}
	if doc.Issuer == "" {
		return "", nil, fmt.Errorf("API server %s names no issuer", discovery)
	}
	if data, err = a.get(ctx, jwks); err != nil {
		return "", nil, err
	}
	set, err := parseKeySet(data)
	if err != nil {
		return "", nil, fmt.Errorf("API server %s: %w", jwks, err)
	}
	return doc.Issuer, set, nil
}

func (a *apiServerFetcher) get(ctx context.Context, path string) ([]byte, error) {
	body, err := a.client.Get().AbsPath(path).SetHeader("Accept", "application/jwk-set+json, application/json").Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("API server %s: %w (the CA's identity needs the system:service-account-issuer-discovery role)", path, describeAPIError(err))
	}
	defer body.Close()
	data, err := readDocument(body)
	if err != nil {
		return nil, fmt.Errorf("API server %s: %w", path, err)
	}
	return data, nil
}
