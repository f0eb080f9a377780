package authn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/castellan-mesh/castellan/internal/dnsname"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// defaultReviewTimeout bounds one TokenReview round trip.
const defaultReviewTimeout = 10 * time.Second

// TokenReviewConfig configures a TokenReview authenticator.
type TokenReviewConfig struct {
	// Client talks to the Kubernetes API server. Required. The CA's
	// identity needs permission to create tokenreviews.
	Client kubernetes.Interface
	// Audiences are the token audiences the CA accepts (for Istio's agent,
	// "istio-ca"). A token must be valid for at least one. Required.
	Audiences []string
	// Timeout bounds each review. Zero means 10s.
	Timeout time.Duration
	// Registerer receives the castellan_tokenreviews_total counter. Nil
	// means the counter is not exported.
	Registerer prometheus.Registerer
}

// TokenReview authenticates Kubernetes service-account tokens by asking the
// API server with a TokenReview. Every call sends one review; wrap it in a
// Cache so that review load does not grow with CSR load.
type TokenReview struct {
	client    authenticationv1client.TokenReviewInterface
	audiences []string
	timeout   time.Duration
	reviews   *prometheus.CounterVec
}

// NewTokenReview returns a TokenReview authenticator for cfg.
func NewTokenReview(cfg TokenReviewConfig) (*TokenReview, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("authn: token review needs a Kubernetes client")
	case len(cfg.Audiences) == 0:
		return nil, errors.New("authn: token review needs at least one audience")
	case slices.Contains(cfg.Audiences, ""):
		return nil, errors.New("authn: token review audience must not be empty")
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultReviewTimeout
	}
	f := promreg.WithShared(cfg.Registerer)
	reviews := f.CounterVec("castellan_tokenreviews_total",
		"TokenReviews sent to the Kubernetes API server, by result (authenticated, unauthenticated, error).", "result")
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	return &TokenReview{
		client:    cfg.Client.AuthenticationV1().TokenReviews(),
		audiences: slices.Clone(cfg.Audiences),
		timeout:   timeout,
		reviews:   reviews,
	}, nil
}

// Authenticate sends a TokenReview for token and returns the service
// account it was issued to. A token that is not shaped like a JWT is
// refused without a review. When the API server cannot be reached, the
// error has ReasonUnavailable.
func (r *TokenReview) Authenticate(ctx context.Context, token string) (Caller, error) {
	if err := checkShape(token); err != nil {
		return Caller{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	review := &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: r.audiences},
	}
	res, err := r.client.Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		r.reviews.WithLabelValues("error").Inc()
		return Caller{}, &Error{Reason: ReasonUnavailable, Err: fmt.Errorf("token review failed: %w", describeAPIError(err))}
	}
	st := res.Status
	if !st.Authenticated {
		r.reviews.WithLabelValues("unauthenticated").Inc()
		if st.Error != "" {
			return Caller{}, Errorf(ReasonInvalid, "token rejected by the API server: %s", st.Error)
		}
		return Caller{}, Errorf(ReasonInvalid, "token rejected by the API server")
	}
	r.reviews.WithLabelValues("authenticated").Inc()
	if !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(r.audiences, a) }) {
		return Caller{}, Errorf(ReasonInvalid, "token audiences %q do not include any of %q", st.Audiences, r.audiences)
	}
	caller, err := ParseUsername(st.User.Username)
	if err != nil {
		return Caller{}, err
	}
	caller.PodName, caller.PodUID, caller.NodeName = podBinding(st.User.Extra)
	return caller, nil
}

// The user.extra keys in which TokenReview reports the pod (and its node)
// that a projected service-account token is bound to.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// maxUIDLen bounds a UID read from a token or a review; Kubernetes UIDs
// are 36-character UUIDs.
const maxUIDLen = 128

// podBinding returns the pod a reviewed token is bound to, and its node,
// from TokenReview's user.extra. A binding that is partial or malformed
// (no UID, several values, a name that is not a Kubernetes name) is
// reported as no binding at all, so that nothing relies on half of it.
func podBinding(extra map[string]authenticationv1.ExtraValue) (pod, uid, node string) {
	one := func(key string) string {
		if v := extra[key]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	return checkBinding(one(extraPodName), one(extraPodUID), one(extraNodeName))
}

// checkBinding returns a pod binding (pod name, pod UID, node name) as
// given when the pod name and UID are well formed, and none otherwise. A
// malformed node name is dropped: the node is a hint, the pod is the
// binding.
func checkBinding(pod, uid, node string) (string, string, string) {
	if !dnsname.IsSubdomain(pod) || uid == "" || len(uid) > maxUIDLen {
		return "", "", ""
	}
	if !dnsname.IsSubdomain(node) {
		node = ""
	}
	return pod, uid, node
}

// describeAPIError keeps an API-server error short: the status and reason
// for an API status, the error itself for a transport failure. The request
// carried a token, so nothing from the request body is echoed.
func describeAPIError(err error) error {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		s := status.Status()
		return fmt.Errorf("API server answered %d %s: %s", s.Code, s.Reason, s.Message)
	}
	return err
}
