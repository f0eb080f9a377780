package sds_test

import (
	"bytes"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

var tdB = spiffeid.RequireTrustDomainFromString("b.test")

// federatedSet returns a set with one federated trust domain, b.test,
// whose authorities are the roots of cas.
func federatedSet(t *testing.T, cas ...*svidstoretest.CA) *svidstore.Federated {
	t.Helper()
	var certs []*x509.Certificate
	for _, ca := range cas {
		certs = append(certs, ca.Bundle(t).Certificates...)
	}
	f, err := svidstore.NewFederated([]*spiffebundle.Bundle{spiffebundle.FromX509Authorities(tdB, certs)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// trusted returns the certificates of a validation_context secret.
func trusted(t *testing.T, secret *tlsSecret) []*x509.Certificate {
	t.Helper()
	if secret == nil {
		t.Fatal("secret missing")
	}
	certs, err := sdsclient.TrustedCA(secret)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func sameCerts(a []*x509.Certificate, b ...[]*x509.Certificate) bool {
	var want []*x509.Certificate
	for _, x := range b {
		want = append(want, x...)
	}
	if len(a) != len(want) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, want[i].Raw) {
			return false
		}
	}
	return true
}

// TestFederatedValidationContexts: ROOTCA keeps the local roots, each
// federated trust domain is its own validation context named by its
// trust domain ID, and ALL holds both; a change of the foreign bundle is
// pushed, over SotW and delta.
func TestFederatedValidationContexts(t *testing.T) {
	name := sds.FederatedSecretName(tdB)
	if name != "spiffe://b.test" {
		t.Fatalf("federated secret name %q", name)
	}
	t.Run("sotw", func(t *testing.T) {
		e := newEnv(t)
		local := e.current().Bundle.Certificates
		s := e.openSotW()
		if err := s.Subscribe(sds.RootCASecretName, sds.AllBundlesSecretName, name); err != nil {
			t.Fatal(err)
		}
		r := s.AwaitACK()
		if _, ok := r.Secrets[name]; ok || len(r.Errors) != 0 {
			t.Fatalf("before federation: secrets %v, errors %v", keys(r.Secrets), r.Errors)
		}
		if !sameCerts(trusted(t, r.Secrets[sds.AllBundlesSecretName]), local) {
			t.Fatal("ALL without federation is not the local roots")
		}
		caB := svidstoretest.NewCA(t, "b root")
		e.store.SetFederated(federatedSet(t, caB))
		r = s.AwaitACK()
		foreign := caB.Bundle(t).Certificates
		switch {
		case !sameCerts(trusted(t, r.Secrets[sds.RootCASecretName]), local):
			t.Fatal("ROOTCA holds more than the local roots")
		case !sameCerts(trusted(t, r.Secrets[name]), foreign):
			t.Fatal("spiffe://b.test does not hold b.test's roots")
		case !sameCerts(trusted(t, r.Secrets[sds.AllBundlesSecretName]), local, foreign):
			t.Fatal("ALL does not hold the local and b.test's roots")
		}
		for _, sec := range r.Secrets {
			if err := sec.ValidateAll(); err != nil {
				t.Fatal(err)
			}
		}
		// b.test rotates: a second root joins its bundle.
		caB2 := svidstoretest.NewCA(t, "b root 2")
		e.store.SetFederated(federatedSet(t, caB, caB2))
		r = s.AwaitACK()
		if !sameCerts(trusted(t, r.Secrets[name]), foreign, caB2.Bundle(t).Certificates) {
			t.Fatal("the rotation of b.test was not pushed")
		}
		// The same set again pushes nothing.
		e.store.SetFederated(federatedSet(t, caB, caB2))
		s.None()
	})
	t.Run("delta", func(t *testing.T) {
		e := newEnv(t)
		d := e.openDelta(nil)
		if err := d.Subscribe(name); err != nil {
			t.Fatal(err)
		}
		caB := svidstoretest.NewCA(t, "b root")
		e.store.SetFederated(federatedSet(t, caB))
		r := d.AwaitACK()
		if !sameCerts(trusted(t, r.Secrets[name]), caB.Bundle(t).Certificates) {
			t.Fatalf("delta: got %v", keys(r.Secrets))
		}
		// Federation with b.test ends: the resource is removed.
		e.store.SetFederated(nil)
		r = d.AwaitACK()
		if len(r.Removed) != 1 || r.Removed[0] != name {
			t.Fatalf("delta: removed %v, want %s", r.Removed, name)
		}
	})
	t.Run("not a trust domain ID", func(t *testing.T) {
		e := newEnv(t)
		s := e.openSotW()
		if err := s.Subscribe("spiffe://B.TEST/x"); err != nil {
			t.Fatal(err)
		}
		r := s.Await()
		if len(r.Errors) != 1 {
			t.Fatalf("errors %v, want a NOT_FOUND for the name", r.Errors)
		}
	})
}
