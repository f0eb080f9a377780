package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/workloadapi"
)

// jwtKey is a signing key of a test trust domain.
type jwtKey struct {
	td  spiffeid.TrustDomain
	kid string
	key *ecdsa.PrivateKey
}

func newJWTKey(t *testing.T, td, kid string) jwtKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jwtKey{td: spiffeid.RequireTrustDomainFromString(td), kid: kid, key: k}
}

// sign returns a JWT-SVID of this key's trust domain for path and aud.
func (k jwtKey) sign(t *testing.T, path string, aud []string, exp time.Time) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k.key, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  spiffeid.RequireFromPath(k.td, path).String(),
		Audience: aud,
		IssuedAt: jwt.NewNumericDate(time.Now().Add(-time.Minute)),
		Expiry:   jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeJWT serves a local JWT bundle; it issues no tokens.
type fakeJWT struct {
	mu      sync.Mutex
	b       *workloadapi.JWTBundle
	changed chan struct{}
}

func (f *fakeJWT) FetchJWTSVID(context.Context, []string, string) (workloadapi.JWTSVID, error) {
	return workloadapi.JWTSVID{}, status.Error(codes.Unavailable, "fake: no tokens")
}

func (f *fakeJWT) LoadJWTBundle() (*workloadapi.JWTBundle, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b, f.changed
}

func (f *fakeJWT) set(t *testing.T, version string, keys ...jwtKey) {
	t.Helper()
	jb := jwtbundle.New(keys[0].td)
	for _, k := range keys {
		if err := jb.AddJWTAuthority(k.kid, k.key.Public()); err != nil {
			t.Fatal(err)
		}
	}
	b, err := workloadapi.NewJWTBundle(jb, version)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.b = b
	close(f.changed)
	f.changed = make(chan struct{})
}

// setFederated gives store the federated bundles holding keys (the JWT
// authorities of their trust domains).
func setFederated(t *testing.T, store *svidstore.Store, keys ...jwtKey) {
	t.Helper()
	byTD := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	var list []*spiffebundle.Bundle
	for _, k := range keys {
		b := byTD[k.td]
		if b == nil {
			b = spiffebundle.New(k.td)
			byTD[k.td] = b
			list = append(list, b)
		}
		if err := b.AddJWTAuthority(k.kid, crypto.PublicKey(k.key.Public())); err != nil {
			t.Fatal(err)
		}
	}
	f, err := svidstore.NewFederated(list)
	if err != nil {
		t.Fatal(err)
	}
	store.SetFederated(f)
}

// newJWTEnv serves store with a JWT issuer over a Unix socket and returns
// a go-spiffe client of it.
func newJWTEnv(t *testing.T, store *svidstore.Store, j workloadapi.JWTIssuer) *spiffeapi.Client {
	t.Helper()
	srv, err := workloadapi.New(store, workloadapi.WithJWT(j))
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := spiffeapi.New(ctx, spiffeapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestValidateFederatedJWTSVID: a token of a federated trust domain is
// validated against that domain's JWT authorities, with the same
// audience and expiry checks as a local one; a token of a domain the
// agent does not federate with, or signed by a key of another domain,
// fails.
func TestValidateFederatedJWTSVID(t *testing.T) {
	e := newEnv(t)
	local := newJWTKey(t, "cluster.local", "local-1")
	b1 := newJWTKey(t, "b.test", "b-1")
	c1 := newJWTKey(t, "c.test", "c-1")
	j := &fakeJWT{changed: make(chan struct{})}
	j.set(t, "v1", local)
	setFederated(t, e.store, b1)
	client := newJWTEnv(t, e.store, j)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hour := time.Now().Add(time.Hour)

	// Another key claiming b.test's kid is not b.test's key.
	forgedKey := c1
	forgedKey.td, forgedKey.kid = b1.td, b1.kid
	forged := forgedKey.sign(t, "/ns/default/sa/api", []string{"x"}, hour)
	for _, tc := range []struct {
		name, token, aud, wantID string
	}{
		{"local", local.sign(t, "/ns/default/sa/web", []string{"x"}, hour), "x", "spiffe://cluster.local/ns/default/sa/web"},
		{"federated", b1.sign(t, "/ns/default/sa/api", []string{"x", "y"}, hour), "y", "spiffe://b.test/ns/default/sa/api"},
		{"federated wrong audience", b1.sign(t, "/ns/default/sa/api", []string{"x"}, hour), "y", ""},
		{"federated expired", b1.sign(t, "/ns/default/sa/api", []string{"x"}, time.Now().Add(-time.Minute)), "x", ""},
		{"not federated", c1.sign(t, "/ns/default/sa/api", []string{"x"}, hour), "x", ""},
		{"federated kid, other key", forged, "x", ""},
		{"local key naming a federated domain", func() string { k := local; k.td = b1.td; return k.sign(t, "/ns/default/sa/api", []string{"x"}, hour) }(), "x", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svid, err := client.ValidateJWTSVID(ctx, tc.token, tc.aud)
			if tc.wantID == "" {
				if err == nil {
					t.Fatalf("validated as %s", svid.ID)
				}
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("code %v, want InvalidArgument: %v", status.Code(err), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if svid.ID.String() != tc.wantID {
				t.Fatalf("ID %s, want %s", svid.ID, tc.wantID)
			}
		})
	}
}

// TestFetchJWTBundlesFederated: go-spiffe's client gets the local JWT
// bundle and the federated domains' (keyed by trust domain ID; a domain
// without JWT authorities is left out), validates a federated token
// against the set with jwtsvid.ParseAndValidate, and a JWTSource sees a
// federated key rotation without a restart.
func TestFetchJWTBundlesFederated(t *testing.T) {
	e := newEnv(t)
	local := newJWTKey(t, "cluster.local", "local-1")
	b1 := newJWTKey(t, "b.test", "b-1")
	j := &fakeJWT{changed: make(chan struct{})}
	j.set(t, "v1", local)
	// c.test has X.509 authorities only.
	onlyX509 := spiffebundle.New(spiffeid.RequireTrustDomainFromString("c.test"))
	for _, c := range e.ca.Bundle(t).Certificates {
		onlyX509.AddX509Authority(c)
	}
	bB := spiffebundle.New(b1.td)
	if err := bB.AddJWTAuthority(b1.kid, b1.key.Public()); err != nil {
		t.Fatal(err)
	}
	f, err := svidstore.NewFederated([]*spiffebundle.Bundle{bB, onlyX509})
	if err != nil {
		t.Fatal(err)
	}
	e.store.SetFederated(f)
	client := newJWTEnv(t, e.store, j)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	set, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 2 || !set.Has(local.td) || !set.Has(b1.td) {
		t.Fatalf("bundles for %v, want cluster.local and b.test", set.Bundles())
	}
	hour := time.Now().Add(time.Hour)
	if _, err := jwtsvid.ParseAndValidate(b1.sign(t, "/ns/default/sa/api", []string{"x"}, hour), set, []string{"x"}); err != nil {
		t.Fatalf("a token of b.test does not validate against FetchJWTBundles' set: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(b1.sign(t, "/ns/default/sa/api", []string{"x"}, hour), set, []string{"y"}); err == nil {
		t.Fatal("a token of b.test for audience x validated for audience y")
	}

	src, err := spiffeapi.NewJWTSource(ctx, spiffeapi.WithClient(client))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	b2 := newJWTKey(t, "b.test", "b-2")
	tok2 := b2.sign(t, "/ns/default/sa/api", []string{"x"}, hour)
	if _, err := jwtsvid.ParseAndValidate(tok2, src, []string{"x"}); err == nil {
		t.Fatal("a token of an unpublished key validated")
	}
	setFederated(t, e.store, b1, b2)
	for {
		if _, err := jwtsvid.ParseAndValidate(tok2, src, []string{"x"}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the rotated JWT bundle of b.test did not reach the JWTSource")
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The local bundle is still there beside it.
	if _, err := src.GetJWTBundleForTrustDomain(local.td); err != nil {
		t.Fatal(err)
	}
}

// TestFetchJWTBundlesFederatedBeforeLocal: federated JWT bundles are
// streamed even before the CA's own JWT keys are known.
func TestFetchJWTBundlesFederatedBeforeLocal(t *testing.T) {
	e := newEnv(t)
	b1 := newJWTKey(t, "b.test", "b-1")
	setFederated(t, e.store, b1)
	client := newJWTEnv(t, e.store, &fakeJWT{changed: make(chan struct{})})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	set, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 1 || !set.Has(b1.td) {
		t.Fatalf("bundles for %v, want b.test", set.Bundles())
	}
	if _, err := client.ValidateJWTSVID(ctx, b1.sign(t, "/ns/default/sa/api", []string{"x"}, time.Now().Add(time.Hour)), "x"); err != nil {
		t.Fatal(err)
	}
}
