package agent

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/workloadapi"
	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/jwtaudience"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// The JWT half of the agent: JWT-SVIDs are minted by the CA
// (castellan.ca.v1.JWTService) for the caller's identity, the same one its
// X.509-SVID names, and cached per identity and audience set until half
// their lifetime has passed. The JWT bundle is polled from the CA every
// Config.JWTBundleRefresh and streamed to workloads when it changes.

// DefaultJWTBundleRefresh is how often the agent asks the CA for its JWT
// authorities by default.
const DefaultJWTBundleRefresh = 30 * time.Second

// Limits of the JWT half.
const (
	// maxJWTCacheEntries caps the tokens cached over all identities and
	// audience sets.
	maxJWTCacheEntries = 4096
	// maxJWTAuthorities caps the keys taken from the CA.
	maxJWTAuthorities = 16
	// maxJWTKeyIDLen and maxJWTPublicKeyLen bound one authority.
	maxJWTKeyIDLen     = 256
	maxJWTPublicKeyLen = 4096
	// maxJWTTokenLen bounds a token taken from the CA.
	maxJWTTokenLen = workloadapi.MaxJWTSVIDBytes
)

// Results of castellan_agent_jwt_svid_requests_total.
const (
	jwtResultCached = "cached"
	jwtResultMinted = "minted"
	jwtResultFailed = "failed"
)

type jwtMetrics struct {
	requests        *prometheus.CounterVec
	bundleFailures  prometheus.Counter
	bundleAuthority prometheus.Gauge
}

func newJWTMetrics(reg prometheus.Registerer) (*jwtMetrics, error) {
	f := promreg.With(reg)
	m := &jwtMetrics{
		requests: f.CounterVec("castellan_agent_jwt_svid_requests_total",
			"JWT-SVIDs asked of the agent, by result (cached, minted, failed).", "result"),
		bundleFailures:  f.Counter("castellan_agent_jwt_bundle_refresh_failures_total", "Failed attempts to fetch the JWT authorities from the CA."),
		bundleAuthority: f.Gauge("castellan_agent_jwt_bundle_authorities", "JWT authorities in the bundle the agent serves."),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("agent: could not register JWT metrics: %w", err)
	}
	for _, r := range []string{jwtResultCached, jwtResultMinted, jwtResultFailed} {
		m.requests.WithLabelValues(r)
	}
	return m, nil
}

// jwtKey names a cached token: the identity asked for ("" for the
// agent's own, per-pod) and the sorted audiences.
type jwtKey struct{ id, audiences string }

type jwtEntry struct {
	svid    workloadapi.JWTSVID
	kid     string
	renewAt time.Time
}

// jwtAgent is the agent's workloadapi.JWTIssuer.
type jwtAgent struct {
	a       *Agent
	metrics *jwtMetrics

	cacheMu sync.Mutex
	cache   map[jwtKey]jwtEntry

	bundleMu sync.Mutex
	bundle   *workloadapi.JWTBundle
	changed  broadcast.Signal // notified and taken under bundleMu: paired with bundle
	refresh  chan struct{}    // asks run for a fetch now
}

func newJWTAgent(a *Agent) (*jwtAgent, error) {
	m, err := newJWTMetrics(a.cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &jwtAgent{a: a, metrics: m, cache: map[jwtKey]jwtEntry{}, refresh: make(chan struct{}, 1)}, nil
}

// LoadJWTBundle implements workloadapi.JWTIssuer.
func (j *jwtAgent) LoadJWTBundle() (*workloadapi.JWTBundle, <-chan struct{}) {
	j.bundleMu.Lock()
	defer j.bundleMu.Unlock()
	return j.bundle, j.changed.C()
}

// FetchJWTSVID implements workloadapi.JWTIssuer: it attests the caller as
// FetchX509SVID does and returns a token for the caller's identity.
func (j *jwtAgent) FetchJWTSVID(ctx context.Context, audiences []string, spiffeID string) (workloadapi.JWTSVID, error) {
	svid, err := j.fetch(ctx, audiences, spiffeID)
	if err != nil {
		j.metrics.requests.WithLabelValues(jwtResultFailed).Inc()
	}
	return svid, err
}

func (j *jwtAgent) fetch(ctx context.Context, audiences []string, spiffeID string) (workloadapi.JWTSVID, error) {
	aud := slices.Clone(audiences)
	sort.Strings(aud)
	aud = slices.Compact(aud)
	if err := jwtaudience.Check(aud); err != nil {
		return workloadapi.JWTSVID{}, status.Error(codes.InvalidArgument, "agent: "+strings.TrimPrefix(err.Error(), "jwtsvid: "))
	}
	id, err := j.callerID(ctx)
	if err != nil {
		return workloadapi.JWTSVID{}, err
	}
	if spiffeID != "" {
		want, err := spiffeid.FromString(spiffeID)
		switch {
		case err != nil:
			return workloadapi.JWTSVID{}, status.Errorf(codes.InvalidArgument, "agent: spiffe_id %q is not a SPIFFE ID: %v", truncateID(spiffeID), err)
		case !id.IsZero() && want != id:
			return workloadapi.JWTSVID{}, j.a.refuse("spiffe_id_mismatch", codes.PermissionDenied,
				"agent: the caller is %s and may not have a JWT-SVID for %s", id, want)
		}
		id = want
	}
	key := jwtKey{id: id.String(), audiences: strings.Join(aud, "\x00")}
	if id.IsZero() {
		key.id = ""
	}
	if svid, ok := j.cached(key); ok {
		j.metrics.requests.WithLabelValues(jwtResultCached).Inc()
		return svid, nil
	}
	svid, entry, err := j.mint(ctx, id, aud)
	if err != nil {
		return workloadapi.JWTSVID{}, err
	}
	j.store(key, entry)
	j.metrics.requests.WithLabelValues(jwtResultMinted).Inc()
	return svid, nil
}

// callerID returns the identity the caller of ctx is entitled to: in
// node mode the SPIFFE ID of its pod's service account, once attested to
// a running pod of this node (the same checks as for its X.509-SVID);
// otherwise the agent's own (zero when the CA derives it from the token).
func (j *jwtAgent) callerID(ctx context.Context) (spiffeid.ID, error) {
	a := j.a
	if a.ids == nil {
		return a.cfg.SPIFFEID, nil
	}
	p, ok := attest.PeerFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, a.refuse(string(attest.ReasonNoPeerCredentials), codes.PermissionDenied,
			"agent: the connection carries no peer credentials; the caller cannot be attested")
	}
	w, err := a.cfg.Attestor.Attest(ctx, p)
	if err != nil {
		reason, ok := attest.ReasonOf(err)
		if !ok {
			reason = attest.ReasonProcUnreadable
		}
		return spiffeid.ID{}, a.refuse(string(reason), codes.PermissionDenied, "agent: caller refused: %v", err)
	}
	if !a.cfg.Pods.HasServiceAccount(w.Namespace, w.ServiceAccount) {
		return spiffeid.ID{}, a.refuse(refusedNoRunningPod, codes.PermissionDenied,
			"agent: no running pod of service account %s/%s is on this node", w.Namespace, w.ServiceAccount)
	}
	id, err := spiffeid.FromSegments(a.cfg.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, a.refuse(refusedNoRunningPod, codes.PermissionDenied, "agent: service account %s/%s makes no SPIFFE ID: %v", w.Namespace, w.ServiceAccount, err)
	}
	return id, nil
}

// cached returns the token cached under key, if it is not past half its
// lifetime and its key is still in the bundle.
func (j *jwtAgent) cached(key jwtKey) (workloadapi.JWTSVID, bool) {
	j.cacheMu.Lock()
	defer j.cacheMu.Unlock()
	e, ok := j.cache[key]
	if !ok {
		return workloadapi.JWTSVID{}, false
	}
	if time.Now().Before(e.renewAt) && j.hasKey(e.kid) {
		return e.svid, true
	}
	delete(j.cache, key)
	return workloadapi.JWTSVID{}, false
}

// store caches e under key, making room when the cache is full: first by
// dropping tokens past half their lifetime, then any.
func (j *jwtAgent) store(key jwtKey, e jwtEntry) {
	j.cacheMu.Lock()
	defer j.cacheMu.Unlock()
	if _, ok := j.cache[key]; !ok && len(j.cache) >= maxJWTCacheEntries {
		now := time.Now()
		for k, old := range j.cache {
			if !now.Before(old.renewAt) {
				delete(j.cache, k)
			}
		}
		for k := range j.cache {
			if len(j.cache) < maxJWTCacheEntries {
				break
			}
			delete(j.cache, k)
		}
	}
	j.cache[key] = e
}

// hasKey reports whether the current bundle holds kid.
func (j *jwtAgent) hasKey(kid string) bool {
	b, _ := j.LoadJWTBundle()
	if b == nil {
		return false
	}
	_, ok := b.Bundle.FindJWTAuthority(kid)
	return ok
}

// mint asks the CA for a token for id (zero: the agent's own) and
// audiences, and checks it against the JWT bundle.
func (j *jwtAgent) mint(ctx context.Context, id spiffeid.ID, aud []string) (workloadapi.JWTSVID, jwtEntry, error) {
	a := j.a
	client, token, err := j.caClient()
	if err != nil {
		return workloadapi.JWTSVID{}, jwtEntry{}, status.Error(codes.Unavailable, err.Error())
	}
	req := &jwtapi.MintJWTSVIDRequest{Audience: aud}
	if !id.IsZero() {
		req.SpiffeId = id.String()
	}
	callCtx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	if err := j.awaitBundle(callCtx); err != nil {
		return workloadapi.JWTSVID{}, jwtEntry{}, err
	}
	sent := time.Now()
	resp, err := client.MintJWTSVID(metadata.AppendToOutgoingContext(callCtx, "authorization", "Bearer "+token), req)
	if err != nil {
		st := status.Convert(err)
		code := st.Code()
		if code == codes.Unknown || code == codes.DeadlineExceeded || code == codes.Canceled {
			code = codes.Unavailable
		}
		return workloadapi.JWTSVID{}, jwtEntry{}, status.Errorf(code, "agent: CA at %s refused the JWT-SVID: %s", a.cfg.CAAddr, st.Message())
	}
	svid, entry, err := j.check(resp, id, aud, sent)
	if err != nil {
		// The CA may sign with a key the agent has not fetched yet.
		j.refreshNow()
		return workloadapi.JWTSVID{}, jwtEntry{}, status.Error(codes.Unavailable, err.Error())
	}
	return svid, entry, nil
}

// awaitBundle waits until a JWT bundle is known (the first fetch may
// still be under way), asking for a fetch now, or until ctx ends.
func (j *jwtAgent) awaitBundle(ctx context.Context) error {
	for {
		b, changed := j.LoadJWTBundle()
		if b != nil {
			return nil
		}
		j.refreshNow()
		select {
		case <-changed:
		case <-ctx.Done():
			return status.Errorf(codes.Unavailable, "agent: no JWT bundle from the CA at %s yet to check its JWT-SVIDs with", j.a.cfg.CAAddr)
		}
	}
}

// check verifies the CA's token against the bundle: signature, audiences,
// expiry and subject.
func (j *jwtAgent) check(resp *jwtapi.MintJWTSVIDResponse, id spiffeid.ID, aud []string, sent time.Time) (workloadapi.JWTSVID, jwtEntry, error) {
	tok := resp.GetToken()
	if len(tok) > maxJWTTokenLen {
		return workloadapi.JWTSVID{}, jwtEntry{}, fmt.Errorf("agent: the CA's JWT-SVID is %d bytes, more than %d", len(tok), maxJWTTokenLen)
	}
	b, _ := j.LoadJWTBundle()
	if b == nil {
		return workloadapi.JWTSVID{}, jwtEntry{}, errors.New("agent: no JWT bundle from the CA yet to check its JWT-SVID with")
	}
	svid, err := spiffejwt.ParseAndValidate(tok, b.Bundle, aud)
	if err != nil {
		return workloadapi.JWTSVID{}, jwtEntry{}, fmt.Errorf("agent: the CA's JWT-SVID does not verify against the JWT bundle: %w", err)
	}
	if !id.IsZero() && svid.ID != id {
		return workloadapi.JWTSVID{}, jwtEntry{}, fmt.Errorf("agent: the CA signed a JWT-SVID for %s, but %s was asked for", svid.ID, id)
	}
	kid, err := keyID(tok)
	if err != nil {
		return workloadapi.JWTSVID{}, jwtEntry{}, err
	}
	if svid.Expiry.Before(sent) {
		sent = svid.Expiry
	}
	renewAt := sent.Add(svid.Expiry.Sub(sent) / 2)
	out := workloadapi.JWTSVID{SPIFFEID: svid.ID.String(), Token: tok}
	return out, jwtEntry{svid: out, kid: kid, renewAt: renewAt}, nil
}

// keyID returns the kid header of a token that verified.
func keyID(tok string) (string, error) {
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.PS256})
	if err != nil || len(jws.Signatures) != 1 {
		return "", fmt.Errorf("agent: the CA's JWT-SVID has no single signature: %v", err)
	}
	return jws.Signatures[0].Header.KeyID, nil
}

// caClient returns the CA's JWT service, verified against the X.509
// bundle, and the agent's token.
func (j *jwtAgent) caClient() (jwtapi.JWTServiceClient, string, error) {
	a := j.a
	snap, _ := a.store.Load()
	if snap.Bundle == nil {
		return nil, "", fmt.Errorf("agent: no trust bundle loaded from %s; cannot verify the CA", a.cfg.RootCertFile)
	}
	c, err := a.caClient(snap.Bundle)
	if err != nil {
		return nil, "", err
	}
	token, err := readToken(a.cfg.TokenFile)
	if err != nil {
		return nil, "", err
	}
	return jwtapi.NewJWTServiceClient(c.Conn()), token, nil
}

// refreshNow asks run to fetch the bundle now.
func (j *jwtAgent) refreshNow() {
	select {
	case j.refresh <- struct{}{}:
	default:
	}
}

// run fetches the JWT authorities from the CA now and every
// JWTBundleRefresh (every second until the first succeeds, at most
// JWTBundleRefresh), until ctx ends. A failed fetch keeps the last bundle.
func (j *jwtAgent) run(ctx context.Context) error {
	var lastErr string
	for {
		wait := j.a.cfg.JWTBundleRefresh
		if err := j.fetchBundle(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			j.metrics.bundleFailures.Inc()
			if err.Error() != lastErr {
				j.a.log.Warn("agent: could not fetch the JWT authorities from the CA; the last ones stay", "error", err)
			}
			lastErr = err.Error()
			if b, _ := j.LoadJWTBundle(); b == nil {
				wait = min(wait, time.Second)
			}
		} else {
			lastErr = ""
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-j.refresh:
			t.Stop()
		case <-t.C:
		}
	}
}

// fetchBundle asks the CA for its JWT authorities and installs them when
// they changed.
func (j *jwtAgent) fetchBundle(ctx context.Context) error {
	a := j.a
	client, token, err := j.caClient()
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	resp, err := client.FetchJWTAuthorities(metadata.AppendToOutgoingContext(callCtx, "authorization", "Bearer "+token), &jwtapi.FetchJWTAuthoritiesRequest{})
	if err != nil {
		return fmt.Errorf("agent: CA at %s: %w", a.cfg.CAAddr, err)
	}
	b, err := parseJWTAuthorities(resp)
	if err != nil {
		return err
	}
	if a.ids != nil && b.Bundle.TrustDomain() != a.cfg.TrustDomain {
		return fmt.Errorf("agent: the CA's JWT authorities are for trust domain %s, not %s", b.Bundle.TrustDomain(), a.cfg.TrustDomain)
	}
	j.bundleMu.Lock()
	defer j.bundleMu.Unlock()
	if j.bundle != nil && j.bundle.Version == b.Version {
		return nil
	}
	j.bundle = b
	j.changed.Notify()
	j.metrics.bundleAuthority.Set(float64(len(b.Bundle.JWTAuthorities())))
	a.log.Info("agent: JWT bundle updated", "trust_domain", b.Bundle.TrustDomain().Name(), "authorities", len(b.Bundle.JWTAuthorities()))
	return nil
}

// parseJWTAuthorities checks the CA's answer and makes it a bundle: a
// trust domain, 1 to maxJWTAuthorities keys, each with a key ID and a
// PKIX public key of bounded size, no key ID twice.
func parseJWTAuthorities(resp *jwtapi.FetchJWTAuthoritiesResponse) (*workloadapi.JWTBundle, error) {
	td, err := spiffeid.TrustDomainFromString(resp.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("agent: the CA's JWT authorities name no valid trust domain: %w", err)
	}
	auths := resp.GetAuthorities()
	switch {
	case len(auths) == 0:
		return nil, errors.New("agent: the CA sent no JWT authority")
	case len(auths) > maxJWTAuthorities:
		return nil, fmt.Errorf("agent: the CA sent %d JWT authorities, more than %d", len(auths), maxJWTAuthorities)
	}
	keys := make(map[string]crypto.PublicKey, len(auths))
	h := sha256.New()
	sorted := slices.Clone(auths)
	sort.Slice(sorted, func(x, y int) bool { return sorted[x].GetKeyId() < sorted[y].GetKeyId() })
	for i, au := range sorted {
		kid, der := au.GetKeyId(), au.GetPublicKey()
		switch {
		case kid == "" || len(kid) > maxJWTKeyIDLen:
			return nil, fmt.Errorf("agent: JWT authority %d has a key ID of %d bytes (want 1 to %d)", i, len(kid), maxJWTKeyIDLen)
		case len(der) == 0 || len(der) > maxJWTPublicKeyLen:
			return nil, fmt.Errorf("agent: JWT authority %q has a public key of %d bytes (want 1 to %d)", kid, len(der), maxJWTPublicKeyLen)
		case keys[kid] != nil:
			return nil, fmt.Errorf("agent: JWT authority %q is sent twice", kid)
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return nil, fmt.Errorf("agent: JWT authority %q: %w", kid, err)
		}
		keys[kid] = pub
		fmt.Fprintf(h, "%d:%s:%x;", len(kid), kid, der)
	}
	return workloadapi.NewJWTBundle(jwtbundle.FromJWTAuthorities(td, keys), hex.EncodeToString(h.Sum(nil)[:16]))
}

// truncateID shortens a caller-supplied value for messages.
func truncateID(s string) string { return clip.String(s, 256) }
