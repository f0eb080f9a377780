package vault

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeVault issues tokens at the login endpoints and accepts only the
// tokens it has not revoked. It unit-tests the Client's login logic; the
// integration tests run a real Vault.
type fakeVault struct {
	mu      sync.Mutex
	valid   map[string]bool
	n       int
	ttl     int
	logins  []map[string]any
	written int
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasSuffix(r.URL.Path, "/login") {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		if r.Header.Get("X-Vault-Token") != "" {
			http.Error(w, `{"errors":["login sent with a token"]}`, 400)
			return
		}
		if body["role"] == "wrong" {
			http.Error(w, `{"errors":["invalid role name"]}`, 400)
			return
		}
		f.logins = append(f.logins, body)
		f.n++
		tok := fmt.Sprintf("t%d", f.n)
		f.valid[tok] = true
		json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{"client_token": tok, "lease_duration": f.ttl}})
		return
	}
	if !f.valid[r.Header.Get("X-Vault-Token")] {
		http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
		return
	}
	f.written++
	json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"ok": true}})
}

func (f *fakeVault) revokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.valid = map[string]bool{}
}

func (f *fakeVault) loginCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.logins)
}

func newFake(t *testing.T, ttl int) (*fakeVault, string) {
	f := &fakeVault{valid: map[string]bool{"static": true}, ttl: ttl}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func TestReloginOnPermissionDenied(t *testing.T) {
	f, addr := newFake(t, 3600)
	reg := prometheus.NewRegistry()
	c, err := New(Config{Address: addr, Auth: AppRoleAuth{RoleID: "r", SecretID: "s"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Write(ctx, "pki/x", nil); err != nil {
		t.Fatal(err)
	}
	// Vault restarts or the token is revoked: every caller sees 403 at
	// once, and one login serves them all.
	f.revokeAll()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Write(ctx, "pki/x", nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := f.loginCount(); n != 2 {
		t.Errorf("logins = %d, want 2 (one at start, one after the revocation)", n)
	}
	if got := testutil.ToFloat64(c.m.logins.WithLabelValues("approle", "success")); got != 2 {
		t.Errorf("castellan_vault_logins_total{approle,success} = %v, want 2", got)
	}
	if f.logins[0]["role_id"] != "r" || f.logins[0]["secret_id"] != "s" {
		t.Errorf("AppRole login sent %v", f.logins[0])
	}
}

func TestReloginBeforeExpiry(t *testing.T) {
	f, addr := newFake(t, 60)
	c, err := New(Config{Address: addr, Auth: AppRoleAuth{RoleID: "r"}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.now = func() time.Time { return now }
	ctx := context.Background()
	for _, step := range []struct {
		advance time.Duration
		logins  int
	}{
		{0, 1},
		{30 * time.Second, 1},
		{25 * time.Second, 2}, // 55s of 60s: inside the renewal margin
		{10 * time.Second, 2},
	} {
		now = now.Add(step.advance)
		if _, err := c.Read(ctx, "transit/keys/ca"); err != nil {
			t.Fatal(err)
		}
		if n := f.loginCount(); n != step.logins {
			t.Fatalf("after %s: logins = %d, want %d", step.advance, n, step.logins)
		}
	}
}

func TestKubernetesAuthReadsTokenEachLogin(t *testing.T) {
	f, addr := newFake(t, 3600)
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("jwt-1\n"), 0o600)
	c, err := New(Config{Address: addr, Auth: KubernetesAuth{Role: "castellan", TokenFile: file}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Login(ctx); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(file, []byte("jwt-2"), 0o600)
	f.revokeAll()
	if _, err := c.Read(ctx, "pki/ca"); err != nil {
		t.Fatal(err)
	}
	if f.logins[0]["jwt"] != "jwt-1" || f.logins[1]["jwt"] != "jwt-2" || f.logins[1]["role"] != "castellan" {
		t.Errorf("logins sent %v", f.logins)
	}
}

func TestClientErrors(t *testing.T) {
	f, addr := newFake(t, 3600)
	ctx := context.Background()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no address", cfg: Config{Auth: TokenAuth{Token: "x"}}, want: "no address"},
		{name: "bad address", cfg: Config{Address: "vault:8200", Auth: TokenAuth{Token: "x"}}, want: "not an http:// or https:// URL"},
		{name: "no auth", cfg: Config{Address: addr}, want: "no auth method"},
		{name: "revoked static token", cfg: Config{Address: addr, Auth: TokenAuth{Token: "gone"}}, want: "permission denied"},
		{name: "empty token file", cfg: Config{Address: addr, Auth: TokenAuth{File: os.DevNull}}, want: "is empty"},
		{name: "kubernetes wrong role", cfg: Config{Address: addr, Auth: KubernetesAuth{Role: "wrong", TokenFile: writeTemp(t, "jwt")}}, want: "invalid role name"},
		{name: "kubernetes no role", cfg: Config{Address: addr, Auth: KubernetesAuth{}}, want: "no role given"},
		{name: "approle no role id", cfg: Config{Address: addr, Auth: AppRoleAuth{}}, want: "no role ID"},
		{name: "unreachable", cfg: Config{Address: "http://127.0.0.1:1", Auth: AppRoleAuth{RoleID: "r"}}, want: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if err == nil {
				_, err = c.Read(ctx, "pki/ca")
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans several lines", err)
			}
		})
	}
	_ = f
}

func writeTemp(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(content), 0o600)
	return p
}
