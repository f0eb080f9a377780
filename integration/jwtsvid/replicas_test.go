package jwtsvid_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/metadata"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/integration/harness"
)

// startReplicas starts an API server with the test's service account and
// two CA replicas with their material in one Secret (--material=kubernetes)
// and flags, and returns the server, a context carrying the account's
// token (ending with the test's wait budget), the replicas and a JWT
// client of each.
func startReplicas(t *testing.T, flags ...string) (*harness.APIServer, context.Context, [2]*harness.CAProcess, [2]jwtapi.JWTServiceClient) {
	t.Helper()
	api := harness.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
	t.Cleanup(cancel)
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "castellan-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	api.CreateServiceAccount(t, namespace, account)
	token := api.Token(t, namespace, account, []string{harness.DefaultAudience}, time.Hour)
	flags = append([]string{"--kubeconfig", api.Kubeconfig, "--material=kubernetes", "--namespace=castellan-system"}, flags...)
	var (
		replicas [2]*harness.CAProcess
		clients  [2]jwtapi.JWTServiceClient
	)
	for i := range replicas {
		replicas[i] = harness.StartCAProcess(t, append(flags, fmt.Sprintf("--pod-name=castellan-ca-%d", i))...)
		clients[i] = jwtClient(t, replicas[i])
	}
	return api, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), replicas, clients
}

// TestJWTKeysSharedByReplicas runs two CA replicas with their material in
// one Kubernetes Secret (--material=kubernetes): a token minted by one
// verifies against the JWT authorities of the other, and a rotation taken
// once with castellan ca rotate --jwt --material=kubernetes reaches both.
func TestJWTKeysSharedByReplicas(t *testing.T) {
	api, authCtx, _, clients := startReplicas(t)
	ca, cb := clients[0], clients[1]

	bundleOf := func(c jwtapi.JWTServiceClient) *jwtbundle.Bundle {
		t.Helper()
		resp, err := c.FetchJWTAuthorities(authCtx, &jwtapi.FetchJWTAuthoritiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]crypto.PublicKey{}
		for _, au := range resp.GetAuthorities() {
			pub, err := x509.ParsePKIXPublicKey(au.GetPublicKey())
			if err != nil {
				t.Fatal(err)
			}
			keys[au.GetKeyId()] = pub
		}
		return jwtbundle.FromJWTAuthorities(td, keys)
	}
	mint := func(c jwtapi.JWTServiceClient, aud string) string {
		t.Helper()
		resp, err := c.MintJWTSVID(authCtx, &jwtapi.MintJWTSVIDRequest{Audience: []string{aud}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetToken()
	}
	verifies := func(tok string, bundle *jwtbundle.Bundle) bool {
		_, err := spiffejwt.ParseAndValidate(tok, bundle, []string{"x"})
		return err == nil
	}

	old := mint(ca, "x")
	if !verifies(old, bundleOf(cb)) || !verifies(mint(cb, "x"), bundleOf(ca)) {
		t.Fatal("a replica's token does not verify against the other replica's JWT authorities")
	}
	oldKid := kidOf(t, old)

	rotate := func(step string, extra ...string) {
		harness.RunCastellan(t, 0, "jwt", append([]string{"ca", "rotate", step, "--jwt", "--kubeconfig", api.Kubeconfig,
			"--material=kubernetes", "--namespace=castellan-system"}, extra...)...)
	}
	rotate("prepare")
	harness.WaitFor(t, waitTimeout, "the prepared key at both replicas", func() bool {
		return len(bundleOf(ca).JWTAuthorities()) == 2 && len(bundleOf(cb).JWTAuthorities()) == 2
	})
	rotate("activate", "--force")
	harness.WaitFor(t, waitTimeout, "both replicas signing with the new key", func() bool {
		return kidOf(t, mint(ca, "x")) != oldKid && kidOf(t, mint(cb, "x")) != oldKid
	})
	if !verifies(old, bundleOf(ca)) {
		t.Fatal("a token of the previous key does not verify before retirement")
	}
	rotate("retire", "--force")
	harness.WaitFor(t, waitTimeout, "the retired key to leave both replicas", func() bool {
		return len(bundleOf(ca).JWTAuthorities()) == 1 && len(bundleOf(cb).JWTAuthorities()) == 1
	})
	if verifies(old, bundleOf(ca)) || verifies(old, bundleOf(cb)) {
		t.Fatal("a token of the retired key still verifies")
	}
	if fresh := mint(cb, "x"); !verifies(fresh, bundleOf(ca)) {
		t.Fatal("after the rotation, a replica's token does not verify against the other's keys")
	}
}
