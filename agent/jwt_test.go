package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/kms"
)

// startJWTCA starts the real CA server with a JWT-SVID key set in its
// data directory.
func startJWTCA(t *testing.T, impersonation server.ImpersonationAuthorizer) (*testCA, *jwtsvid.KeySet) {
	t.Helper()
	c := newTestCA(t, impersonation)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ring, err := kms.NewRing(ctx, "file://"+filepath.Join(c.dir, "jwt-key.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	keys, err := jwtsvid.Open(ctx, jwtsvid.Config{Dir: c.dir, Keys: ring, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c.jwt = keys
	c.start(t)
	t.Cleanup(func() { c.stop() })
	return c, keys
}

// TestJWTSVIDWorkloadAPI drives the agent's JWT half with go-spiffe's
// Workload API client: a token for the caller's identity that verifies
// against the streamed JWT bundle for its audiences only, cached, and
// validated by the agent.
func TestJWTSVIDWorkloadAPI(t *testing.T) {
	ca, keys := startJWTCA(t, nil)
	a := startAgent(t, ca, func(c *agent.Config) { c.JWTBundleRefresh = 50 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client, err := spiffeapi.New(ctx, spiffeapi.WithAddr("unix://"+a.cfg.SDSSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	b, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.FindJWTAuthority(keys.Keys().Active.ID); !ok {
		t.Fatalf("the bundle lacks the CA's active key %s", keys.Keys().Active.ID)
	}

	svid, err := client.FetchJWTSVID(ctx, spiffejwt.Params{Audience: "billing", ExtraAudiences: []string{"audit"}})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != wantID {
		t.Fatalf("JWT-SVID for %s, want %s", svid.ID, wantID)
	}
	if _, err := spiffejwt.ParseAndValidate(svid.Marshal(), bundles, []string{"audit"}); err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if _, err := spiffejwt.ParseAndValidate(svid.Marshal(), bundles, []string{"payments"}); err == nil {
		t.Fatal("a token for billing and audit validates for payments")
	}
	again, err := client.FetchJWTSVID(ctx, spiffejwt.Params{Audience: "audit", ExtraAudiences: []string{"billing", "audit"}})
	if err != nil {
		t.Fatal(err)
	}
	if again.Marshal() != svid.Marshal() {
		t.Error("the same audience set within half the lifetime got a new token")
	}
	if got := a.metric(t, "castellan_agent_jwt_svid_requests_total", "cached"); got != 1 {
		t.Errorf("cached requests = %v, want 1", got)
	}

	v, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "billing")
	if err != nil || v.ID.String() != wantID || v.Claims["sub"] != wantID {
		t.Fatalf("ValidateJWTSVID: %v, %+v", err, v)
	}
	if _, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "payments"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID for another audience: %v, want InvalidArgument", err)
	}

	for _, tc := range []struct {
		name   string
		params spiffejwt.Params
		code   codes.Code
	}{
		{"another identity", spiffejwt.Params{Audience: "x", Subject: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/db")}, codes.PermissionDenied},
		{"too many audiences", spiffejwt.Params{Audience: "x", ExtraAudiences: strings.Fields("a b c d e f g h i j k l m n o p")}, codes.InvalidArgument},
		{"audience too long", spiffejwt.Params{Audience: strings.Repeat("x", jwtsvid.MaxAudienceLen+1)}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.FetchJWTSVID(ctx, tc.params)
			if status.Code(err) != tc.code {
				t.Fatalf("FetchJWTSVID: %v, want %s", err, tc.code)
			}
		})
	}
}

// TestJWTSVIDNodeMode: a node agent mints JWT-SVIDs for the attested
// caller's own service account only, and for nobody whose pod is not
// running on the node or who cannot be attested, cached token or not.
func TestJWTSVIDNodeMode(t *testing.T) {
	f := newNodeFakes()
	ca, _ := startJWTCA(t, f)
	a := startAgent(t, ca, func(c *agent.Config) {
		c.Attestation = agent.AttestationNode
		c.Attestor = f
		c.Pods = f
		c.OutputDir = ""
		c.JWTBundleRefresh = 50 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client, err := spiffeapi.New(ctx, spiffeapi.WithAddr("unix://"+a.cfg.SDSSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const dbID = "spiffe://cluster.local/ns/default/sa/db"

	f.setRunning("default", "db", true)
	f.be("default", "db")
	svid, err := client.FetchJWTSVID(ctx, spiffejwt.Params{Audience: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != dbID || f.grantsFor(dbID) != 1 {
		t.Fatalf("JWT-SVID for %s with %d grants, want %s with 1", svid.ID, f.grantsFor(dbID), dbID)
	}
	for _, tc := range []struct {
		name  string
		setup func()
		sub   string
	}{
		{"another identity", func() { f.be("default", "db") }, wantID},
		{"no running pod", func() { f.be("default", "web") }, ""},
		{"not attested", func() { f.mu.Lock(); f.refusal = errors.New("pid reused"); f.mu.Unlock() }, ""},
		{"pod stopped, cached token", func() { f.be("default", "db"); f.setRunning("default", "db", false) }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			params := spiffejwt.Params{Audience: "x"}
			if tc.sub != "" {
				params.Subject = spiffeid.RequireFromString(tc.sub)
			}
			_, err := client.FetchJWTSVID(ctx, params)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("FetchJWTSVID: %v, want PermissionDenied", err)
			}
		})
	}
	if n := f.grantsFor(wantID); n != 0 {
		t.Fatalf("the CA was asked for %s %d times", wantID, n)
	}
}
