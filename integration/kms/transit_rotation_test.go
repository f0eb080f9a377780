package kms_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// TestCommandTransitRootRotation runs "castellan ca" with its self-signed
// root's key in Vault Transit and rotation due at once. With a token that
// may create keys, the next root's key is a new non-exportable Transit key
// beside the first. With a token that may only sign, the prepare step
// fails every time, says why, and the rotation metrics stay: phase steady,
// the root served, the failures counted.
func TestCommandTransitRootRotation(t *testing.T) {
	v := harness.StartVault(t)
	v.EnableTransit(t)
	dir := t.TempDir()
	if err := v.API.Sys().PutPolicy("castellan", harness.CastellanPolicy); err != nil {
		t.Fatal(err)
	}
	const signOnly = `
path "transit/keys/castellan-root" { capabilities = ["read"] }
path "transit/sign/castellan-root" { capabilities = ["update"] }
`
	if err := v.API.Sys().PutPolicy("sign-only", signOnly); err != nil {
		t.Fatal(err)
	}
	// The first key exists before either CA starts.
	v.Write(t, "transit/keys/castellan-root", map[string]any{"type": "ecdsa-p256"})
	tokenFile := func(policy string) string {
		t.Helper()
		sec, err := v.API.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, NoDefaultPolicy: false})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, policy+"-token")
		if err := os.WriteFile(f, []byte(sec.Auth.ClientToken), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	iss := newOfflineIssuer(t)
	start := func(policy string) *harness.CAProcess {
		t.Helper()
		return harness.StartCAProcess(t, append([]string{"--signer-key-uri", "vault-transit://transit/castellan-root",
			"--vault-addr", v.Addr, "--vault-auth", "token", "--vault-token-file", tokenFile(policy),
			"--root-rotate-before", "175200h"}, iss.flags()...)...)
	}
	phase := func(p *harness.CAProcess, want string) {
		t.Helper()
		harness.WaitFor(t, 20*time.Second, "castellan_ca_rotation_phase{phase="+want+"} = 1", func() bool {
			return p.Metrics(t).Value("castellan_ca_rotation_phase", "phase", want) == 1
		})
	}

	t.Run("may create keys", func(t *testing.T) {
		p := start("castellan")
		phase(p, "prepared")
		harness.WaitFor(t, 10*time.Second, "/bundle to hold the prepared root", func() bool {
			return len(mustParse(t, fetchBundle(t, p.HTTPAddr))) == 2
		})
		var st struct {
			NextKey string `json:"next_key"`
		}
		b, err := os.ReadFile(filepath.Join(p.DataDir, "rotation.json"))
		if err != nil || json.Unmarshal(b, &st) != nil || !strings.HasPrefix(st.NextKey, "castellan-root-") {
			t.Fatalf("rotation.json names no next key: %s (%v)", b, err)
		}
		key := v.Read(t, "transit/keys/"+st.NextKey)
		if key == nil || key.Data["exportable"] != false || key.Data["type"] != "ecdsa-p256" {
			t.Fatalf("the next root's key is not a non-exportable Transit key: %v", key)
		}
		if got := p.Metrics(t).Value("castellan_ca_rotation_steps_total", "step", "prepare"); got != 1 {
			t.Fatalf("castellan_ca_rotation_steps_total{prepare} = %v", got)
		}
	})

	t.Run("may only sign", func(t *testing.T) {
		p := start("sign-only")
		harness.WaitFor(t, 20*time.Second, "a failed prepare to be counted", func() bool {
			return p.Metrics(t).Value("castellan_ca_rotation_steps_total", "step", "error") >= 1
		})
		phase(p, "steady")
		m := p.Metrics(t)
		if m.Value("castellan_ca_bundle_roots") != 1 || m.Value("castellan_ca_rotation_status_errors_total") != 0 {
			t.Fatalf("rotation metrics: %s", m)
		}
		if _, n := p.LogLines("cannot create the next root's key"); n == 0 {
			t.Fatalf("the CA does not say why the rotation fails:\n%s", p.Logs())
		}
		if _, err := os.Stat(filepath.Join(p.DataDir, "rotation.json")); !os.IsNotExist(err) {
			t.Fatalf("a failed prepare left rotation.json (%v)", err)
		}
	})
}
