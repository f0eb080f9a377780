package workloadapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/internal/testpoll"
)

// TestFederatedBundles: go-spiffe's client gets the federated trust
// domain's bundle in its x509bundle.Set, from FetchX509SVID
// (federated_bundles) and FetchX509Bundles, verifies an SVID of that
// domain with it, and sees the foreign bundle change without a restart.
func TestFederatedBundles(t *testing.T) {
	e := newEnv(t)
	tdB := spiffeid.RequireTrustDomainFromString("b.test")
	caB := svidstoretest.NewCA(t, "b root")
	setB := func(cas ...*svidstoretest.CA) {
		var b []*spiffebundle.Bundle
		sb := spiffebundle.New(tdB)
		for _, ca := range cas {
			for _, c := range ca.Bundle(t).Certificates {
				sb.AddX509Authority(c)
			}
		}
		b = append(b, sb)
		f, err := svidstore.NewFederated(b)
		if err != nil {
			t.Fatal(err)
		}
		e.store.SetFederated(f)
	}
	setB(caB)
	svidB := caB.Issue(t, "spiffe://b.test/ns/default/sa/api", time.Hour)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := spiffeapi.New(ctx, spiffeapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svidB.X509.Certificates, x509ctx.Bundles); err != nil {
		t.Fatalf("FetchX509SVID's bundles do not verify an SVID of b.test: %v", err)
	}
	if !x509ctx.Bundles.Has(spiffeid.RequireTrustDomainFromString("cluster.local")) {
		t.Fatal("the local bundle is missing")
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svidB.X509.Certificates, bundles); err != nil {
		t.Fatalf("FetchX509Bundles does not verify an SVID of b.test: %v", err)
	}

	// b.test rotates to a new root: a stream sees it.
	caB2 := svidstoretest.NewCA(t, "b root 2")
	svidB2 := caB2.Issue(t, "spiffe://b.test/ns/default/sa/api", time.Hour)
	if _, _, err := x509svid.Verify(svidB2.X509.Certificates, bundles); err == nil {
		t.Fatal("an SVID of an unknown root verified")
	}
	src, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClient(client))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	setB(caB, caB2)
	testpoll.Until(t, "the rotated bundle of b.test to reach the X509Source", func() bool {
		_, _, err := x509svid.Verify(svidB2.X509.Certificates, src)
		return err == nil
	})
}
