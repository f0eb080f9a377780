// Package jwtsvid_test checks JWT-SVIDs end to end: a castellan ca process
// against a real API server, a castellan-agent process, and go-spiffe's
// own Workload API client, JWTSource and JWT-SVID validation.
package jwtsvid_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

const (
	namespace   = "default"
	account     = "web"
	waitTimeout = 30 * time.Second
)

var (
	td     = spiffeid.RequireTrustDomainFromString("cluster.local")
	webID  = spiffeid.RequireFromSegments(td, "ns", namespace, "sa", account)
	otherD = spiffeid.RequireFromSegments(td, "ns", namespace, "sa", "db")
)

// stack is a CA process, an agent process beside one workload (per-pod
// mode) and a go-spiffe client of the agent's socket.
type stack struct {
	api    *harness.APIServer
	ca     *harness.CAProcess
	token  string
	socket string
	client *workloadapi.Client
}

// start starts the stack; caArgs are more flags of the CA.
func start(t *testing.T, caArgs ...string) *stack {
	t.Helper()
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, namespace, account)
	ca := harness.StartCAProcess(t, append([]string{"--kubeconfig", api.Kubeconfig, "--jwt-svid-ttl", "2m"}, caArgs...)...)
	s := &stack{api: api, ca: ca, token: api.Token(t, namespace, account, []string{harness.DefaultAudience}, time.Hour)}
	dir, err := os.MkdirTemp("", "jwt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte(s.token), 0o600); err != nil {
		t.Fatal(err)
	}
	s.socket = filepath.Join(dir, "socket")
	startAgent(t, ca, tokenFile, s.socket)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	harness.WaitFor(t, waitTimeout, "the agent's socket", func() bool { _, err := os.Stat(s.socket); return err == nil })
	if s.client, err = workloadapi.New(ctx, workloadapi.WithAddr("unix://"+s.socket)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.client.Close() })
	return s
}

// TestJWTSVIDs fetches JWT-SVIDs and the JWT bundle through go-spiffe's
// client and validates them with go-spiffe: audience-bound, for the
// workload's identity, refused once expired, and refused by the agent's
// ValidateJWTSVID for another audience.
func TestJWTSVIDs(t *testing.T) {
	s := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	svid, err := s.client.FetchJWTSVID(ctx, spiffejwt.Params{Audience: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := s.client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := spiffejwt.ParseAndValidate(svid.Marshal(), bundles, []string{"billing"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if got.ID != webID {
		t.Fatalf("sub %s, want %s", got.ID, webID)
	}
	if life := got.Expiry.Sub(time.Unix(int64(got.Claims["iat"].(float64)), 0)); life != 2*time.Minute {
		t.Errorf("lifetime %s, want --jwt-svid-ttl 2m", life)
	}

	// A token for audience X fails validation for Y, at the verifier and
	// at the agent.
	if _, err := spiffejwt.ParseAndValidate(svid.Marshal(), bundles, []string{"payments"}); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("a billing token for payments: %v", err)
	}
	if _, err := s.client.ValidateJWTSVID(ctx, svid.Marshal(), "payments"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("agent ValidateJWTSVID for another audience: %v", err)
	}
	if v, err := s.client.ValidateJWTSVID(ctx, svid.Marshal(), "billing"); err != nil || v.ID != webID {
		t.Fatalf("agent ValidateJWTSVID: %v, %v", err, v)
	}

	// An expired token, signed with the CA's own active key, fails.
	expired := signWithCAKey(t, s.ca.DataDir, webID, "billing", time.Now().Add(-time.Hour), time.Now().Add(-2*time.Minute))
	if _, err := spiffejwt.ParseAndValidate(expired, bundles, []string{"billing"}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired token: %v", err)
	}
	if _, err := s.client.ValidateJWTSVID(ctx, expired, "billing"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("agent ValidateJWTSVID of an expired token: %v", err)
	}
	// The same key with a valid lifetime verifies: the refusal above was
	// the expiry.
	fresh := signWithCAKey(t, s.ca.DataDir, webID, "billing", time.Now(), time.Now().Add(time.Minute))
	if _, err := spiffejwt.ParseAndValidate(fresh, bundles, []string{"billing"}); err != nil {
		t.Fatalf("a token signed with the CA's key: %v", err)
	}

	// The CA's /bundle.spiffe carries the same JWT authorities.
	resp, err := http.Get("http://" + s.ca.HTTPAddr + "/bundle.spiffe")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	doc, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		t.Fatalf("/bundle.spiffe: %v", err)
	}
	want, _ := bundles.GetJWTBundleForTrustDomain(td)
	if !b.JWTBundle().Equal(want) {
		t.Fatalf("/bundle.spiffe JWT authorities %v, the agent's %v", b.JWTAuthorities(), want.JWTAuthorities())
	}
}

// TestJWTSVIDRefusals calls the CA's JWT service directly, as a hostile or
// mistaken client would.
func TestJWTSVIDRefusals(t *testing.T) {
	s := start(t)
	client := jwtClient(t, s.ca)
	auth := func(tok string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		t.Cleanup(cancel)
		if tok == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	seventeen := make([]string, jwtsvid.MaxAudiences+1)
	for i := range seventeen {
		seventeen[i] = "aud" + strings.Repeat("x", i)
	}
	for _, tc := range []struct {
		name  string
		token string
		req   *jwtapi.MintJWTSVIDRequest
		code  codes.Code
	}{
		{"no token", "", &jwtapi.MintJWTSVIDRequest{Audience: []string{"a"}}, codes.Unauthenticated},
		{"junk token", "junk", &jwtapi.MintJWTSVIDRequest{Audience: []string{"a"}}, codes.Unauthenticated},
		{"another identity", s.token, &jwtapi.MintJWTSVIDRequest{Audience: []string{"a"}, SpiffeId: otherD.String()}, codes.PermissionDenied},
		{"no audience", s.token, &jwtapi.MintJWTSVIDRequest{}, codes.InvalidArgument},
		{"17 audiences", s.token, &jwtapi.MintJWTSVIDRequest{Audience: seventeen}, codes.InvalidArgument},
		{"oversized audience", s.token, &jwtapi.MintJWTSVIDRequest{Audience: []string{strings.Repeat("a", jwtsvid.MaxAudienceLen+1)}}, codes.InvalidArgument},
		{"oversized request", s.token, &jwtapi.MintJWTSVIDRequest{Audience: []string{strings.Repeat("a", 80<<10)}}, codes.ResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.MintJWTSVID(auth(tc.token), tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("MintJWTSVID: %v, %v; want %s", resp, err, tc.code)
			}
		})
	}
	resp, err := client.MintJWTSVID(auth(s.token), &jwtapi.MintJWTSVIDRequest{Audience: []string{"a"}, SpiffeId: webID.String()})
	if err != nil || resp.GetSpiffeId() != webID.String() {
		t.Fatalf("MintJWTSVID for the caller's own ID: %v, %v", resp, err)
	}
	m := s.ca.Metrics(t)
	if n := m.Value("castellan_ca_jwt_svids_refused_total", "reason", "invalid_audience"); n != 3 {
		t.Errorf("refused for invalid_audience: %v, want 3", n)
	}
	if n := m.Value("castellan_ca_jwt_svids_refused_total", "reason", "impersonation"); n != 1 {
		t.Errorf("refused for impersonation: %v, want 1", n)
	}
	if n := m.Value("castellan_ca_jwt_svids_minted_total"); n < 1 {
		t.Errorf("minted: %v", n)
	}
}

// TestJWTKeyRotation rotates the CA's JWT key with castellan ca rotate
// --jwt while a go-spiffe JWTSource watches the agent: the prepared key
// reaches the source before it signs, new tokens carry the new kid, tokens
// of the previous key verify until it is retired and not after.
func TestJWTKeyRotation(t *testing.T) {
	s := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	source, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+s.socket)))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	authorities := func() map[string]bool {
		b, err := source.GetJWTBundleForTrustDomain(td)
		if err != nil {
			return nil
		}
		out := map[string]bool{}
		for kid := range b.JWTAuthorities() {
			out[kid] = true
		}
		return out
	}
	old, err := source.FetchJWTSVID(ctx, spiffejwt.Params{Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	oldKid := kidOf(t, old.Marshal())
	rotate := func(step string, extra ...string) {
		harness.RunCastellan(t, 0, "jwt", append([]string{"ca", "rotate", step, "--jwt", "--data-dir", s.ca.DataDir}, extra...)...)
	}

	rotate("prepare")
	harness.WaitFor(t, waitTimeout, "the prepared JWT key at the JWTSource", func() bool { return len(authorities()) == 2 })
	if kid := kidOf(t, mustFetch(t, source, "b")); kid != oldKid {
		t.Fatalf("the prepared key signs (kid %s)", kid)
	}
	var newKid string
	for kid := range authorities() {
		if kid != oldKid {
			newKid = kid
		}
	}

	rotate("activate", "--force")
	n := 0
	harness.WaitFor(t, waitTimeout, "a token of the activated key", func() bool {
		n++
		return kidOf(t, mustFetch(t, source, "c"+strings.Repeat("x", n))) == newKid
	})
	if _, err := spiffejwt.ParseAndValidate(old.Marshal(), source, []string{"a"}); err != nil {
		t.Fatalf("a token of the previous key before retirement: %v", err)
	}

	harness.RunCastellan(t, 1, "may be valid until", "ca", "rotate", "retire", "--jwt", "--data-dir", s.ca.DataDir)
	rotate("retire", "--force")
	harness.WaitFor(t, waitTimeout, "the retired key to leave the JWTSource", func() bool { a := authorities(); return len(a) == 1 && a[newKid] })
	if _, err := spiffejwt.ParseAndValidate(old.Marshal(), source, []string{"a"}); err == nil {
		t.Fatal("a token of the retired key still verifies")
	}
	if _, err := s.client.ValidateJWTSVID(ctx, old.Marshal(), "a"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("agent ValidateJWTSVID of a retired key's token: %v", err)
	}
	// The agent drops a cached token whose key was retired.
	again := mustFetch(t, source, "a")
	if again == old.Marshal() || kidOf(t, again) != newKid {
		t.Fatal("the agent served a cached token of the retired key")
	}
	out := harness.RunCastellan(t, 0, newKid, "ca", "rotate", "status", "--jwt", "--data-dir", s.ca.DataDir)
	if strings.Contains(out, oldKid) {
		t.Fatalf("status still lists the retired key:\n%s", out)
	}
}

func mustFetch(t *testing.T, source *workloadapi.JWTSource, aud string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	svid, err := source.FetchJWTSVID(ctx, spiffejwt.Params{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	return svid.Marshal()
}

func kidOf(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// signWithCAKey signs a token with the CA's active JWT key, read from its
// data directory.
func signWithCAKey(t *testing.T, dataDir string, id spiffeid.ID, aud string, iat, exp time.Time) string {
	t.Helper()
	st, _, err := jwtsvid.ReadState(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pemfile.ReadPrivateKey(filepath.Join(dataDir, st.Active+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	kid, err := jwtsvid.KeyID(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: id.String(), Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// jwtClient dials the CA's JWT service, trusting the roots of its /bundle.
func jwtClient(t *testing.T, ca *harness.CAProcess) jwtapi.JWTServiceClient {
	t.Helper()
	resp, err := http.Get("http://" + ca.HTTPAddr + "/bundle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pemRoots, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemRoots) {
		t.Fatalf("the CA's /bundle holds no certificate: %q", pemRoots)
	}
	conn, err := grpc.NewClient(ca.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: ca.ServerName, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return jwtapi.NewJWTServiceClient(conn)
}

// startAgent runs castellan-agent against ca with the token in tokenFile,
// serving on socket, with args added; it is stopped when the test ends.
func startAgent(t *testing.T, ca *harness.CAProcess, tokenFile, socket string, args ...string) {
	t.Helper()
	bin := harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace")
	cmd := exec.Command(bin, append([]string{"--ca-addr=" + ca.GRPCAddr, "--ca-server-name=" + ca.ServerName, "--root-cert=" + ca.RootFile,
		"--token-file=" + tokenFile, "--sds-socket=" + socket, "--http-addr=-", "--jwt-bundle-refresh=200ms"}, args...)...)
	logs := &harness.Output{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent logs:\n%s\nCA logs:\n%s", logs.String(), ca.Logs())
		}
	})
}
