package jwtsvid_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/castellan-mesh/castellan/internal/jwtaudience"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

var (
	td = spiffeid.RequireTrustDomainFromString("example.org")
	id = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
)

func newKeySet(t *testing.T) (*jwtsvid.KeySet, *jwtsvid.Rotator) { return newKeySetB(t) }

func newKeySetB(t testing.TB) (*jwtsvid.KeySet, *jwtsvid.Rotator) {
	t.Helper()
	dir := t.TempDir()
	ring, err := kms.NewRing(context.Background(), "file://"+filepath.Join(dir, "jwt-key.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	ks, err := jwtsvid.Open(context.Background(), jwtsvid.Config{Dir: dir, Keys: ring})
	if err != nil {
		t.Fatal(err)
	}
	return ks, &jwtsvid.Rotator{Dir: dir, Keys: ring}
}

// bundle is the trust domain's JWT bundle as a verifier sees it.
func bundle(ks *jwtsvid.KeySet) *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(td, ks.JWTAuthorities())
}

func mint(t *testing.T, ks *jwtsvid.KeySet, aud ...string) *jwtsvid.Token {
	t.Helper()
	tok, err := ks.Mint(context.Background(), id, aud, jwtsvid.DefaultTTL)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMintVerifiesWithGoSPIFFE(t *testing.T) {
	ks, _ := newKeySet(t)
	tok := mint(t, ks, "billing", "audit")
	svid, err := spiffejwt.ParseAndValidate(tok.Token, bundle(ks), []string{"audit"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if svid.ID != id {
		t.Errorf("sub = %s, want %s", svid.ID, id)
	}
	if got := svid.Expiry.Sub(tok.IssuedAt); got != jwtsvid.DefaultTTL {
		t.Errorf("lifetime = %s, want %s", got, jwtsvid.DefaultTTL)
	}
	if kid := ks.Keys().Active.ID; tok.KeyID != kid {
		t.Errorf("kid = %s, want %s", tok.KeyID, kid)
	}
}

func TestValidationRefuses(t *testing.T) {
	ks, _ := newKeySet(t)
	good := mint(t, ks, "x")
	expired, err := jwtsvid.Mint(context.Background(), ks.Keys().Active, id, []string{"x"}, jwtsvid.MinTTL, time.Now().Add(-time.Hour)) // past go-jose's leeway of 1 minute
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newKeySet(t) // another CA's key
	for _, tc := range []struct {
		name, token, audience string
		bundle                *jwtbundle.Bundle
		want                  string
	}{
		{"wrong audience", good.Token, "y", bundle(ks), "expected audience"},
		{"expired", expired.Token, "x", bundle(ks), "expired"},
		{"unknown key", good.Token, "x", bundle(other), "no JWT authority"},
		{"tampered", good.Token[:len(good.Token)-4] + "AAAA", "x", bundle(ks), "cryptographic primitive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := spiffejwt.ParseAndValidate(tc.token, tc.bundle, []string{tc.audience})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseAndValidate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCheckAudiences(t *testing.T) {
	many := make([]string, jwtsvid.MaxAudiences+1)
	for i := range many {
		many[i] = "a" + strings.Repeat("b", i)
	}
	for _, tc := range []struct {
		name string
		aud  []string
		ok   bool
	}{
		{"one", []string{"spiffe://example.org/db"}, true},
		{"sixteen", many[:jwtsvid.MaxAudiences], true},
		{"none", nil, false},
		{"seventeen", many, false},
		{"empty", []string{"a", ""}, false},
		{"too long", []string{strings.Repeat("a", jwtsvid.MaxAudienceLen+1)}, false},
		{"longest", []string{strings.Repeat("a", jwtsvid.MaxAudienceLen)}, true},
		{"duplicate", []string{"a", "a"}, false},
		{"space", []string{"a b"}, false},
		{"control", []string{"a\nb"}, false},
		{"non-ascii", []string{"é"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := jwtsvid.CheckAudiences(tc.aud)
			var ae *jwtaudience.Error
			switch {
			case tc.ok && err != nil:
				t.Fatalf("refused: %v", err)
			case !tc.ok && !errors.As(err, &ae):
				t.Fatalf("got %v, want a *jwtaudience.Error", err)
			}
		})
	}
}

func TestMintRefusesBadLifetime(t *testing.T) {
	ks, _ := newKeySet(t)
	for _, ttl := range []time.Duration{0, jwtsvid.MinTTL - time.Second, jwtsvid.MaxTTL + time.Second} {
		if _, err := ks.Mint(context.Background(), id, []string{"a"}, ttl); err == nil {
			t.Errorf("ttl %s: minted", ttl)
		}
	}
}

// TestRotation walks prepare, activate and retire: the prepared key is
// published before it signs, tokens of the previous key verify until it
// is retired, and not after.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	ks, r := newKeySet(t)
	reload := func() {
		t.Helper()
		if _, err := ks.Reload(ctx); err != nil {
			t.Fatal(err)
		}
	}
	first := ks.Keys().Active.ID
	old := mint(t, ks, "a")
	changed := ks.Changed()

	if err := r.Activate(ctx, true); err == nil {
		t.Fatal("activate in the steady phase succeeded")
	}
	if err := r.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	reload()
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed by the prepare")
	}
	if n := len(ks.JWTAuthorities()); n != 2 {
		t.Fatalf("%d authorities after prepare, want 2", n)
	}
	if kid := mint(t, ks, "a").KeyID; kid != first {
		t.Fatalf("prepared key signs: kid %s", kid)
	}
	if err := r.Activate(ctx, false); err == nil || !strings.Contains(err.Error(), "wait until") {
		t.Fatalf("activate before the propagation delay: %v", err)
	}
	if err := r.Activate(ctx, true); err != nil {
		t.Fatal(err)
	}
	reload()
	next := mint(t, ks, "a")
	if next.KeyID == first {
		t.Fatal("the activated key does not sign")
	}
	for _, tok := range []*jwtsvid.Token{old, next} {
		if _, err := spiffejwt.ParseAndValidate(tok.Token, bundle(ks), []string{"a"}); err != nil {
			t.Fatalf("token of %s after activation: %v", tok.KeyID, err)
		}
	}
	if err := r.Retire(ctx, false); err == nil || !strings.Contains(err.Error(), "may be valid until") {
		t.Fatalf("retire before the last token expired: %v", err)
	}
	if err := r.Retire(ctx, true); err != nil {
		t.Fatal(err)
	}
	reload()
	if _, err := spiffejwt.ParseAndValidate(old.Token, bundle(ks), []string{"a"}); err == nil {
		t.Fatal("a token of the retired key verifies")
	}
	if _, err := spiffejwt.ParseAndValidate(next.Token, bundle(ks), []string{"a"}); err != nil {
		t.Fatalf("token of the active key after retirement: %v", err)
	}
	st, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != rotation.PhaseSteady || len(st.Keys) != 1 || st.Keys[0].KeyID != next.KeyID {
		t.Fatalf("status after retirement: %+v", st)
	}
}

func TestParseState(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		ok        bool
	}{
		{"steady", `{"phase":"steady","active":"jwt-1"}`, true},
		{"prepared", `{"phase":"prepared","active":"jwt-1","next":"jwt-2"}`, true},
		{"activated", `{"phase":"activated","active":"jwt-2","previous":"jwt-1"}`, true},
		{"no active", `{"phase":"steady"}`, false},
		{"prepared without next", `{"phase":"prepared","active":"jwt-1"}`, false},
		{"next is active", `{"phase":"prepared","active":"jwt-1","next":"jwt-1"}`, false},
		{"steady with previous", `{"phase":"steady","active":"jwt-1","previous":"jwt-0"}`, false},
		{"bad name", `{"phase":"steady","active":"../root-key"}`, false},
		{"unknown phase", `{"phase":"done","active":"jwt-1"}`, false},
		{"not json", `phase: steady`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := jwtsvid.ParseState("test", []byte(tc.doc))
			if (err == nil) != tc.ok {
				t.Fatalf("ParseState: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"phase":"prepared","active":"jwt-1","next":"jwt-2","prepared_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"phase":"activated","active":"jwt-2","previous":"jwt-1","retired":["jwt-0"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := jwtsvid.ParseState("fuzz", b)
		if err != nil {
			return
		}
		// A state that parses is written back and parses the same.
		dir := t.TempDir()
		if err := jwtsvid.WriteState(dir, st); err != nil {
			t.Fatalf("WriteState of a parsed state: %v", err)
		}
		again, _, err := jwtsvid.ReadState(dir)
		if err != nil || again.Active != st.Active || again.Phase != st.Phase {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, st)
		}
	})
}

// TestRunFollowsStateChanged: with a change channel for the state's
// store, Run picks a rotation step up at the change, with no reload
// interval to wait for (it is an hour).
func TestRunFollowsStateChanged(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	ring, err := kms.NewRing(ctx, "file://"+filepath.Join(dir, "jwt-key.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	var sig broadcast.Signal
	taken := make(chan struct{}, 1)
	ks, err := jwtsvid.Open(ctx, jwtsvid.Config{Dir: dir, Keys: ring, ReloadInterval: time.Hour,
		StateChanged: func() <-chan struct{} {
			ch := sig.C()
			select {
			case taken <- struct{}{}:
			default:
			}
			return ch
		}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = ks.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-taken // Run waits on the state's change channel

	changed := ks.Changed()
	if err := (&jwtsvid.Rotator{Dir: dir, Keys: ring}).Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	sig.Notify()
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("the prepared key was not loaded at the state's change")
	}
	if n := len(ks.JWTAuthorities()); n != 2 {
		t.Fatalf("%d authorities after prepare, want 2", n)
	}
}
