package kms_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestCommandHSMRootRotation runs "castellan ca" with its self-signed
// root's key in a SoftHSM2 token and automatic rotation due at once. The
// CA prepares the next root with a key it generates in the same token (a
// new object, never a key file); the rotation metrics and "castellan ca
// rotate status" report each phase; after activation the CA signs under
// the new root with the HSM's new key, after retirement only that root is
// trusted, and a restart keeps signing under it.
func TestCommandHSMRootRotation(t *testing.T) {
	softHSMToken(t, "castellan")
	iss := newOfflineIssuer(t)
	uri := softHSMURI("root")
	caArgs := append([]string{"--signer-key-uri", uri, "--root-rotate-before", "175200h"}, iss.flags()...)
	p := harness.StartCAProcess(t, caArgs...)
	noKeyFile := func() {
		t.Helper()
		ents, err := os.ReadDir(p.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			// A key file; jwt-keys.json only names keys in the HSM.
			if strings.HasSuffix(e.Name(), ".pem") && strings.Contains(e.Name(), "key") {
				t.Fatalf("the data directory holds %s although the root key is in the HSM", e.Name())
			}
		}
	}
	rotate := func(want int, contains string, args ...string) {
		t.Helper()
		harness.RunCastellan(t, want, contains, append([]string{"ca", "rotate"}, append(args, "--data-dir", p.DataDir)...)...)
	}
	phase := func(want string) {
		t.Helper()
		harness.WaitFor(t, 15*time.Second, "castellan_ca_rotation_phase{phase="+want+"} = 1", func() bool {
			return p.Metrics(t).Value("castellan_ca_rotation_phase", "phase", want) == 1
		})
	}
	ep := caEndpoint{grpcAddr: p.GRPCAddr, httpAddr: p.HTTPAddr, serverName: p.ServerName,
		trustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}
	svidRoot := func() *x509.Certificate {
		t.Helper()
		ep.roots = p.Roots(t)
		s, err := requestSVID(t, ep, iss.mint(t, "default", "sleep"), "default", "sleep")
		if err != nil {
			t.Fatalf("%v\nCA logs:\n%s", err, p.Logs())
		}
		return s.chain[len(s.chain)-1]
	}

	// The first rotation step runs at start: a new root joins the bundle.
	harness.WaitFor(t, 15*time.Second, "/bundle to hold the prepared root", func() bool {
		return len(mustParse(t, fetchBundle(t, p.HTTPAddr))) == 2
	})
	phase("prepared")
	if got := p.Metrics(t).Value("castellan_ca_rotation_status_errors_total"); got != 0 {
		t.Fatalf("castellan_ca_rotation_status_errors_total = %v", got)
	}
	noKeyFile()
	old := svidRoot()
	rotate(0, "phase  prepared", "status")
	var st struct {
		NextKey string `json:"next_key"`
	}
	b, err := os.ReadFile(filepath.Join(p.DataDir, "rotation.json"))
	if err != nil || json.Unmarshal(b, &st) != nil || st.NextKey == "" {
		t.Fatalf("rotation.json names no next key: %s (%v)", b, err)
	}

	// Activation switches the CA to the key the HSM now holds.
	rotate(1, "wait until", "activate")
	rotate(0, "phase  activated", "activate", "--force")
	phase("activated")
	var next *x509.Certificate
	harness.WaitFor(t, 15*time.Second, "an SVID under the new root", func() bool {
		next = svidRoot()
		return !next.Equal(old)
	})
	hsmKey, err := kms.Open(context.Background(), softHSMURI(st.NextKey), kms.Config{})
	if err != nil {
		t.Fatalf("the next root's key is not in the token: %v", err)
	}
	if !publicKeysEqual(hsmKey.Public(), next.PublicKey) {
		t.Fatal("the new root is not for the key the HSM holds")
	}
	hsmKey.Close()

	rotate(0, "phase  steady", "retire", "--force")
	harness.WaitFor(t, 15*time.Second, "/bundle to hold only the new root", func() bool {
		b := mustParse(t, fetchBundle(t, p.HTTPAddr))
		return len(b) == 1 && b[0].Equal(next)
	})
	phase("steady")
	noKeyFile()
	rotate(0, "active", "status")

	// A restart on the directory opens the HSM key rotation.json names.
	// (The first CA keeps running on its own ports; both share the token.)
	dataDir := p.DataDir
	p = harness.StartCAProcess(t, append([]string{"--signer-key-uri", uri, "--root-rotate-before", "0", "--data-dir", dataDir}, iss.flags()...)...)
	p.DataDir, p.RootFile = dataDir, filepath.Join(dataDir, "root-cert.pem")
	ep = caEndpoint{grpcAddr: p.GRPCAddr, httpAddr: p.HTTPAddr, serverName: p.ServerName,
		trustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}
	if got := svidRoot(); !got.Equal(next) {
		t.Fatal("the restarted CA does not sign under the new root")
	}
}
