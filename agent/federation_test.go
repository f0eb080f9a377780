package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/trust/federated"
)

// TestFederatedBundlesFile: the agent serves the federated bundles of its
// file, follows changes, and keeps the last good set when the file turns
// bad, too large or goes away.
func TestFederatedBundlesFile(t *testing.T) {
	ca := startCA(t)
	path := filepath.Join(t.TempDir(), federated.FileName)
	tdB := spiffeid.RequireTrustDomainFromString("b.test")
	write := func(data []byte) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	doc := func(cas ...*svidstoretest.CA) []byte {
		b := spiffebundle.New(tdB)
		for _, c := range cas {
			for _, cert := range c.Bundle(t).Certificates {
				b.AddX509Authority(cert)
			}
		}
		d, err := federated.Marshal([]*spiffebundle.Bundle{b})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	held := func(a *testAgent) int {
		snap, _ := a.Store().Load()
		fb := snap.Federated.Lookup(tdB)
		if fb == nil || fb.X509 == nil {
			return 0
		}
		return len(fb.X509.Certificates)
	}
	caB, caB2 := svidstoretest.NewCA(t, "b root"), svidstoretest.NewCA(t, "b root 2")
	write(doc(caB))
	a := startAgent(t, ca, func(c *agent.Config) { c.FederatedBundlesFile = path })
	testpoll.Until(t, "b.test's bundle", func() bool { return held(a) == 1 })

	write(doc(caB, caB2))
	testpoll.Until(t, "b.test's rotated bundle", func() bool { return held(a) == 2 })

	bad := []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("not json")},
		{"empty bundle", []byte(`{"b.test": {"keys": []}}`)},
		{"too large", []byte(`{"b.test": "` + strings.Repeat("x", federated.MaxDocumentSize) + `"}`)},
	}
	for i, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			write(tt.data)
			testpoll.Until(t, "the refusal", func() bool {
				return a.metric(t, "castellan_agent_trust_bundle_loads_total", "federated_error") >= float64(i+1)
			})
			if held(a) != 2 {
				t.Fatal("the last good set was not kept")
			}
		})
	}
	t.Run("removed", func(t *testing.T) {
		before := a.metric(t, "castellan_agent_trust_bundle_loads_total", "federated_error")
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		testpoll.Until(t, "the refusal", func() bool {
			return a.metric(t, "castellan_agent_trust_bundle_loads_total", "federated_error") > before
		})
		if held(a) != 2 {
			t.Fatal("the last good set was not kept")
		}
	})
}

// TestNodeModeFederatedBundles: in node mode every identity's store gets
// the federated bundles, the ones made before a change and after it.
func TestNodeModeFederatedBundles(t *testing.T) {
	a, f := startNodeAgent(t, 0)
	path := filepath.Join(filepath.Dir(a.cfg.RootCertFile), federated.FileName)
	tdB := spiffeid.RequireTrustDomainFromString("b.test")
	write := func(cas ...*svidstoretest.CA) {
		t.Helper()
		b := spiffebundle.New(tdB)
		for _, c := range cas {
			for _, cert := range c.Bundle(t).Certificates {
				b.AddX509Authority(cert)
			}
		}
		d, err := federated.Marshal([]*spiffebundle.Bundle{b})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+".tmp", d, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	roots := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		secrets, err := sdsclient.Fetch(ctx, a.cfg.SDSSocket, sds.FederatedSecretName(tdB))
		if err != nil {
			return 0
		}
		certs, err := sdsclient.TrustedCA(secrets[sds.FederatedSecretName(tdB)])
		if err != nil {
			t.Fatal(err)
		}
		return len(certs)
	}
	f.setRunning("shop", "web", true)
	f.be("shop", "web")
	caB, caB2 := svidstoretest.NewCA(t, "b root"), svidstoretest.NewCA(t, "b root 2")
	write(caB)
	testpoll.Until(t, "b.test's bundle for shop/web", func() bool { return roots() == 1 })
	write(caB, caB2)
	testpoll.Until(t, "b.test's new bundle for shop/web", func() bool { return roots() == 2 })
	f.setRunning("shop", "db", true)
	f.be("shop", "db")
	testpoll.Until(t, "b.test's bundle for a new identity", func() bool { return roots() == 2 })
}
