package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/internal/backoff"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// ImpersonatedIdentityKey is the key, in the metadata of Istio's
// certificate request, of the SPIFFE ID a node agent asks for on behalf of
// a workload.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// maxChainCerts bounds the chain the agent accepts from the CA.
const maxChainCerts = 10

// issueError is a failed attempt to obtain an SVID, with the metric reason.
type issueError struct {
	reason string
	err    error
}

func (e *issueError) Error() string { return e.err.Error() }
func (e *issueError) Unwrap() error { return e.err }

func fail(reason string, format string, args ...any) error {
	return &issueError{reason: reason, err: fmt.Errorf("agent: "+format, args...)}
}

// rotator keeps one identity's SVID fresh in its store. A single-identity
// agent has one; a node agent has one per service account in use on the
// node. They share the agent's configuration, CA connection and metrics.
type rotator struct {
	a     *Agent
	store *svidstore.Store
	// id is the SPIFFE ID asked for (put in the CSR, and required of the
	// SVID), or zero to take whatever the token names.
	id spiffeid.ID
	// impersonate asks the CA for id on behalf of a workload of this node
	// (Istio's ImpersonatedIdentity), with the agent's own token.
	impersonate bool
	log         *slog.Logger
	now         chan struct{}
}

func newRotator(a *Agent, store *svidstore.Store, id spiffeid.ID, impersonate bool) *rotator {
	log := a.log
	if impersonate {
		log = log.With("spiffe_id", id.String())
	}
	return &rotator{a: a, store: store, id: id, impersonate: impersonate, log: log, now: make(chan struct{}, 1)}
}

// rotateNow asks for a new SVID at once.
func (r *rotator) rotateNow() {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

// run obtains SVIDs for as long as ctx lasts: the first at once, then
// each at RotateFraction of the previous one's lifetime (with jitter),
// retrying failures with exponential backoff and jitter. A trust bundle
// that no longer verifies the current SVID, or a call to rotateNow,
// starts a rotation at once.
func (r *rotator) run(ctx context.Context) error {
	a := r.a
	failures := 0
	var wait time.Duration
	snap, changed := r.store.Load()
	bundleVersion := ""
	if snap.Bundle != nil {
		bundleVersion = snap.Bundle.Version
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.now:
		case <-timer.C:
		case <-changed:
			snap, changed = r.store.Load()
			if snap.Bundle == nil || snap.Bundle.Version == bundleVersion {
				continue
			}
			bundleVersion = snap.Bundle.Version
			if snap.SVID != nil && verifySVID(snap.SVID, snap.Bundle) == nil && failures == 0 {
				continue
			}
			// The new roots do not verify the current SVID (or the last
			// attempt failed): try now.
		}

		svid, issuedAt, err := r.issue(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			reason := reasonOther
			var ie *issueError
			if errors.As(err, &ie) {
				reason = ie.reason
			}
			a.metrics.failures.WithLabelValues(reason).Inc()
			a.metrics.consecutive.Set(float64(failures))
			wait = a.backoff(failures)
			cur, _ := r.store.Load()
			attrs := []any{"reason", reason, "error", err, "attempt", failures, "retry_in", wait.Round(time.Millisecond)}
			if cur.SVID != nil {
				attrs = append(attrs, "serving_until", cur.SVID.NotAfter)
			} else {
				attrs = append(attrs, "serving", "nothing (no valid SVID)")
			}
			r.log.Warn("agent: could not obtain an SVID", attrs...)
		} else {
			if failures > 0 {
				r.log.Info("agent: CA reachable again", "failed_attempts", failures)
			}
			failures = 0
			a.metrics.consecutive.Set(0)
			r.store.SetSVID(svid)
			a.metrics.rotations.Inc()
			a.metrics.lastUpdate.Set(float64(time.Now().UnixNano()) / 1e9)
			wait = a.rotationDelay(issuedAt, svid.NotAfter)
			r.log.Info("agent: SVID installed", "spiffe_id", svid.ID().String(), "serial", svid.X509.Certificates[0].SerialNumber.String(),
				"not_after", svid.NotAfter, "next_rotation_in", wait.Round(time.Millisecond))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// rotationDelay is how long to wait before renewing an SVID obtained at
// issuedAt and expiring at notAfter: RotateFraction of that lifetime, moved
// by up to ±RotateJitter/2 of it at random.
func (a *Agent) rotationDelay(issuedAt, notAfter time.Time) time.Duration {
	return max(time.Until(backoff.RenewAt(issuedAt, notAfter, a.cfg.RotateFraction, a.cfg.RotateJitter)), 0)
}

// backoff is the wait after the n-th consecutive failure: InitialBackoff
// doubled for each failure, capped at MaxBackoff, jittered (package
// backoff) so that agents that failed together do not retry together.
func (a *Agent) backoff(n int) time.Duration {
	return backoff.Exponential{Initial: a.cfg.InitialBackoff, Max: a.cfg.MaxBackoff}.Next(n)
}

// issue makes a new key, sends a CSR for it to the CA with the current
// token, and checks what comes back: a chain that parses, whose leaf holds
// the new key and a SPIFFE ID, and that verifies against the trust bundle.
// It returns the SVID and the time the request was sent.
func (r *rotator) issue(ctx context.Context) (*svidstore.SVID, time.Time, error) {
	a := r.a
	snap, _ := r.store.Load()
	if snap.Bundle == nil {
		return nil, time.Time{}, fail(reasonNoBundle, "no trust bundle loaded from %s; cannot verify the CA", a.cfg.RootCertFile)
	}
	client, err := a.caClient(snap.Bundle)
	if err != nil {
		return nil, time.Time{}, &issueError{reason: reasonOther, err: err}
	}
	token, err := readToken(a.cfg.TokenFile)
	if err != nil {
		return nil, time.Time{}, &issueError{reason: reasonToken, err: err}
	}
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, time.Time{}, fail(reasonKey, "could not generate a %s key: %w", a.cfg.KeyType, err)
	}
	var dns []string
	if !r.impersonate {
		dns = a.cfg.DNSNames
	}
	csr, err := newCSR(key, r.id, dns...)
	if err != nil {
		return nil, time.Time{}, &issueError{reason: reasonKey, err: err}
	}

	callCtx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	sent := time.Now()
	req := &pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: int64(a.cfg.TTL / time.Second)}
	if r.impersonate {
		// Istio's wire protocol for a node agent asking on behalf of a
		// workload, as ztunnel sends it: the target SPIFFE ID in the
		// request metadata. The CA grants it only to node agents, for
		// service accounts with a running pod on the agent's node.
		if req.Metadata, err = structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: r.id.String()}); err != nil {
			return nil, time.Time{}, fail(reasonOther, "could not encode the impersonated identity: %w", err)
		}
	}
	chainPEM, err := client.CreateCertificateRequest(callCtx, token, req)
	a.metrics.caLatency.Observe(time.Since(sent).Seconds())
	if err != nil {
		return nil, time.Time{}, &issueError{reason: reasonFor(err), err: fmt.Errorf("agent: CA at %s: %w", a.cfg.CAAddr, err)}
	}

	if len(chainPEM) > maxChainCerts {
		return nil, time.Time{}, fail(reasonBadResponse, "CA returned %d certificates, more than %d", len(chainPEM), maxChainCerts)
	}
	var chain []*x509.Certificate
	for i, p := range chainPEM {
		certs, err := pemfile.ParseCertificates([]byte(p))
		if err != nil {
			return nil, time.Time{}, fail(reasonBadResponse, "CA response certificate %d: %w", i, err)
		}
		if len(certs) != 1 {
			return nil, time.Time{}, fail(reasonBadResponse, "CA response certificate %d is %d PEM CERTIFICATE blocks, want one", i, len(certs))
		}
		chain = append(chain, certs[0])
	}
	svid, err := svidstore.NewSVID(chain, key)
	if err != nil {
		return nil, time.Time{}, fail(reasonBadResponse, "CA response is not an SVID for the key sent: %w", err)
	}
	if err := verifySVID(svid, snap.Bundle); err != nil {
		return nil, time.Time{}, fail(reasonBadResponse, "CA response does not verify against the trust bundle: %w", err)
	}
	if !r.id.IsZero() && svid.ID() != r.id {
		return nil, time.Time{}, fail(reasonBadResponse, "CA issued %s, but %s was asked for", svid.ID(), r.id)
	}
	if !time.Now().Before(svid.NotAfter) {
		return nil, time.Time{}, fail(reasonBadResponse, "CA issued a certificate that expired at %s", svid.NotAfter)
	}
	if svid.X509.Certificates[0].NotBefore.After(sent) {
		sent = svid.X509.Certificates[0].NotBefore
	}
	return svid, sent, nil
}

// verifySVID checks svid against the roots in bundle, for its own trust
// domain.
func verifySVID(svid *svidstore.SVID, bundle *svidstore.Bundle) error {
	td := svid.ID().TrustDomain()
	_, _, err := x509svid.Verify(svid.X509.Certificates, x509bundle.FromX509Authorities(td, bundle.Certificates))
	return err
}

// caClient returns a client that verifies the CA against bundle, making a
// new one when the bundle changed. The rotators share it.
func (a *Agent) caClient(bundle *svidstore.Bundle) (*caclient.Client, error) {
	a.caMu.Lock()
	defer a.caMu.Unlock()
	if a.ca != nil && a.caBundle == bundle.Version {
		return a.ca, nil
	}
	a.closeCAClientLocked()
	pool := x509.NewCertPool()
	for _, c := range bundle.Certificates {
		pool.AddCert(c)
	}
	c, err := caclient.New(caclient.Config{Addr: a.cfg.CAAddr, Roots: pool, ServerName: a.cfg.CAServerName})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.ca, a.caBundle = c, bundle.Version
	return c, nil
}

func (a *Agent) closeCAClient() {
	a.caMu.Lock()
	defer a.caMu.Unlock()
	a.closeCAClientLocked()
}

func (a *Agent) closeCAClientLocked() {
	if a.ca != nil {
		a.ca.Close()
		a.ca, a.caBundle = nil, ""
	}
}

// reasonFor names a gRPC failure for the failure metric.
func reasonFor(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return reasonDeadline
	}
	switch status.Code(err) {
	case codes.Unavailable:
		return reasonUnavailable
	case codes.DeadlineExceeded:
		return reasonDeadline
	case codes.Unauthenticated:
		return reasonUnauthenticated
	case codes.PermissionDenied:
		return reasonDenied
	case codes.InvalidArgument:
		return reasonInvalid
	case codes.ResourceExhausted:
		return reasonExhausted
	}
	if _, isStatus := status.FromError(err); !isStatus {
		// The call succeeded but the client refused the answer.
		return reasonBadResponse
	}
	return reasonOther
}
