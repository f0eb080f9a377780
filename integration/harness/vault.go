package harness

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/hashicorp/vault/api"
)

// vaultVersion is the Vault server scripts/tools.sh builds.
const vaultVersion = "1.21.0"

// VaultBinary returns the Vault server built by scripts/tools.sh. When it
// is missing the test fails, or is skipped if CASTELLAN_ALLOW_SKIP is set.
func VaultBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CASTELLAN_VAULT_BIN"); p != "" {
		return p
	}
	cache := os.Getenv("CASTELLAN_CACHE_DIR")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "castellan")
	}
	p := filepath.Join(cache, "vault-"+vaultVersion, "vault")
	if _, err := os.Stat(p); err != nil {
		SkipUnlessAllowed(t, fmt.Sprintf("the Vault server is not built (%s is missing); run scripts/tools.sh (make tools) to build it", p))
	}
	return p
}

// Vault is a real Vault server on file storage, so that it keeps its
// PKI root, Transit keys and tokens across a restart. It is initialised
// with one unseal key and unsealed at every start.
type Vault struct {
	bin, dir, config string
	unsealKey        string
	// Addr is the server's URL; RootToken its root token.
	Addr, RootToken string
	// API is a client with the root token.
	API *api.Client

	cmd  *exec.Cmd
	done chan struct{}
}

// StartVault starts a Vault server on a free 127.0.0.1 port. It is stopped
// when the test ends.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	v := &Vault{bin: VaultBinary(t), dir: t.TempDir()}
	port := FreePort(t)
	v.Addr = "http://127.0.0.1:" + strconv.Itoa(port)
	v.config = filepath.Join(v.dir, "vault.hcl")
	hcl := fmt.Sprintf(`storage "file" {
  path = %q
}
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
disable_mlock = true
api_addr      = %q
ui            = false
`, filepath.Join(v.dir, "data"), port, v.Addr)
	if err := os.WriteFile(v.config, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	v.Start(t)
	t.Cleanup(v.Stop)
	return v
}

// FreePort returns a 127.0.0.1 TCP port that is free now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts the server process (again, after Stop) and unseals it.
func (v *Vault) Start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(v.dir, "vault.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(v.bin, "server", "-config="+v.config, "-log-level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_DISABLE_MLOCK=true")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting Vault: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	v.cmd, v.done = cmd, done

	if v.API == nil {
		cfg := api.DefaultConfig()
		cfg.Address = v.Addr
		cfg.MaxRetries = 0
		c, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		v.API = c
	}
	v.waitHealth(t, func(code int) bool { return code != 0 })
	sys := v.API.Sys()
	if v.unsealKey == "" {
		resp, err := sys.Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
		if err != nil {
			t.Fatalf("vault operator init: %v\n%s", err, v.Logs())
		}
		v.unsealKey, v.RootToken = resp.Keys[0], resp.RootToken
		v.API.SetToken(v.RootToken)
	}
	if _, err := sys.Unseal(v.unsealKey); err != nil {
		t.Fatalf("vault operator unseal: %v\n%s", err, v.Logs())
	}
	// 200 is an unsealed, active node.
	v.waitHealth(t, func(code int) bool { return code == http.StatusOK })
}

// waitHealth polls /v1/sys/health until ok accepts its status (0 when
// Vault does not answer).
func (v *Vault) waitHealth(t testing.TB, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code := 0
		resp, err := http.Get(v.Addr + "/v1/sys/health")
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if ok(code) {
			return
		}
		select {
		case <-v.done:
			t.Fatalf("Vault exited:\n%s", v.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Vault not healthy after 60s (status %d, error %v):\n%s", code, err, v.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server. It is safe to call more than once.
func (v *Vault) Stop() {
	if v.cmd == nil {
		return
	}
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(15 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
	v.cmd = nil
}

// Logs returns what the server has logged.
func (v *Vault) Logs() string {
	b, _ := os.ReadFile(filepath.Join(v.dir, "vault.log"))
	return string(b)
}

// Write writes to path with the root token and fails the test on error.
func (v *Vault) Write(t testing.TB, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := v.API.Logical().WriteWithContext(context.Background(), path, data)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

// Read reads path with the root token and fails the test on error.
func (v *Vault) Read(t testing.TB, path string) *api.Secret {
	t.Helper()
	s, err := v.API.Logical().ReadWithContext(context.Background(), path)
	if err != nil {
		t.Fatalf("vault read %s: %v", path, err)
	}
	return s
}

// EnablePKI mounts a PKI engine at "pki" with a new internal root and
// returns the root.
func (v *Vault) EnablePKI(t testing.TB) *x509.Certificate {
	t.Helper()
	if err := v.API.Sys().Mount("pki", &api.MountInput{Type: "pki", Config: api.MountConfigInput{MaxLeaseTTL: "87600h"}}); err != nil {
		t.Fatalf("mounting pki: %v", err)
	}
	s := v.Write(t, "pki/root/generate/internal", map[string]any{
		"common_name": "Vault Root CA", "ttl": "87600h", "key_type": "ec", "key_bits": 256, "issuer_name": "vault-root",
	})
	certs, err := pemfile.ParseCertificates([]byte(s.Data["certificate"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// EnableTransit mounts a Transit engine at "transit".
func (v *Vault) EnableTransit(t testing.TB) {
	t.Helper()
	if err := v.API.Sys().Mount("transit", &api.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("mounting transit: %v", err)
	}
}

// CastellanPolicy is what the CA needs: sign its intermediate and use its
// Transit key, nothing else.
const CastellanPolicy = `
path "pki/root/sign-intermediate" { capabilities = ["update"] }
path "pki/issuer/+/sign-intermediate" { capabilities = ["update"] }
path "transit/keys/castellan-*" { capabilities = ["create", "read", "update"] }
path "transit/sign/castellan-*" { capabilities = ["update"] }
`

// AppRole creates the castellan policy and an AppRole whose tokens live
// for tokenTTL, and returns its role ID and a secret ID.
func (v *Vault) AppRole(t testing.TB, tokenTTL time.Duration) (roleID, secretID string) {
	t.Helper()
	if err := v.API.Sys().PutPolicy("castellan", CastellanPolicy); err != nil {
		t.Fatal(err)
	}
	v.EnableAuth(t, "approle")
	ttl := strconv.Itoa(int(tokenTTL/time.Second)) + "s"
	v.Write(t, "auth/approle/role/castellan", map[string]any{
		"token_policies": "castellan", "token_ttl": ttl, "token_max_ttl": ttl,
	})
	roleID = v.Read(t, "auth/approle/role/castellan/role-id").Data["role_id"].(string)
	secretID = v.Write(t, "auth/approle/role/castellan/secret-id", nil).Data["secret_id"].(string)
	return roleID, secretID
}

// EnableAuth enables the auth method typ at its default path, if it is
// not enabled yet.
func (v *Vault) EnableAuth(t testing.TB, typ string) {
	t.Helper()
	err := v.API.Sys().EnableAuthWithOptions(typ, &api.EnableAuthOptions{Type: typ})
	if err != nil && !strings.Contains(err.Error(), "path is already in use") {
		t.Fatalf("enabling %s auth: %v", typ, err)
	}
}
