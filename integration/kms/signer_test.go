package kms_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/vault"
)

// TestSoftHSMRoot keeps the CA's self-signed root key in a SoftHSM2 token:
// the key is generated in the token, no key file is written, SVIDs verify,
// and a restart (a new PKCS#11 session on the same token) keeps the root.
func TestSoftHSMRoot(t *testing.T) {
	softHSMToken(t, "castellan")
	iss := newOfflineIssuer(t)
	w := iss.workload("default", "sleep")
	c, held := startKeyedCA(t, nil, caSetup{keyURI: softHSMURI("root")}, iss.option())

	s := w.fetchSVID(t, c)
	if len(s.chain) != 2 {
		t.Fatalf("chain has %d certificates, want leaf and root", len(s.chain))
	}
	root := s.chain[1]
	if !publicKeysEqual(root.PublicKey, held.key.Public()) {
		t.Fatal("the root is not for the key in the token")
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "root-key.pem")); !os.IsNotExist(err) {
		t.Errorf("a root key file exists in the data directory (%v)", err)
	}
	if got := c.Metrics(t).Value("castellan_kms_sign_duration_seconds", "backend", "pkcs11"); got < 1 {
		t.Errorf("castellan_kms_sign_duration_seconds{pkcs11} = %v", got)
	}
	rootPEM := c.RootPEM

	c.Restart(t)
	if !bytes.Equal(c.RootPEM, rootPEM) {
		t.Fatal("the root changed across a restart")
	}
	s2 := w.fetchSVID(t, c)
	if !s2.chain[1].Equal(root) {
		t.Fatal("the restarted CA signs under another root")
	}
}

// TestTransitRoot keeps the CA's self-signed root key in Vault Transit:
// every certificate the CA signs is one transit/sign call.
func TestTransitRoot(t *testing.T) {
	v := harness.StartVault(t)
	v.EnableTransit(t)
	roleID, secretID := v.AppRole(t, 0)
	iss := newOfflineIssuer(t)
	w := iss.workload("default", "sleep")
	c, held := startKeyedCA(t, nil, caSetup{
		keyURI:    "vault-transit://transit/castellan-root",
		vaultAddr: v.Addr,
		vaultAuth: vault.AppRoleAuth{RoleID: roleID, SecretID: secretID},
	}, iss.option())
	s := w.fetchSVID(t, c)
	root := s.chain[len(s.chain)-1]
	if !publicKeysEqual(root.PublicKey, held.key.Public()) {
		t.Fatal("the root is not for the Transit key")
	}
	key := v.Read(t, "transit/keys/castellan-root")
	if key.Data["exportable"] != false || key.Data["type"] != "ecdsa-p256" {
		t.Errorf("Transit key exportable=%v type=%v; want a non-exportable ecdsa-p256 key", key.Data["exportable"], key.Data["type"])
	}
	before := c.Metrics(t).Value("castellan_kms_sign_duration_seconds", "backend", "vault-transit")
	for i := 0; i < 3; i++ {
		w.fetchSVID(t, c)
	}
	if got := c.Metrics(t).Value("castellan_kms_sign_duration_seconds", "backend", "vault-transit") - before; got != 3 {
		t.Errorf("3 SVIDs took %v Transit signatures, want 3", got)
	}
	c.Restart(t)
	if s2 := w.fetchSVID(t, c); !s2.chain[len(s2.chain)-1].Equal(root) {
		t.Fatal("the restarted CA signs under another root")
	}
}
