package kms_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// flags returns the "castellan ca" flags that select the issuer's keys.
func (o *offlineIssuer) flags() []string {
	return []string{"--token-review=false", "--jwt-issuer", o.m.Issuer(), "--jwks-file", o.jwks}
}

// TestCommandStartupErrors runs "castellan ca" with key stores that are
// absent, locked or misnamed: it exits with an error that names the
// module, slot or URI part and the reason, and starts nothing.
func TestCommandStartupErrors(t *testing.T) {
	softHSMToken(t, "castellan")
	bin := harness.Binary(t, "castellan")
	authFlags := newOfflineIssuer(t).flags()
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte("hvs.test"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "absent PKCS#11 module",
			args: []string{"--signer-key-uri", "pkcs11:token=castellan;object=ca?module-path=/usr/lib/softhsm/no-such-module.so&pin-value=1234"},
			want: []string{"PKCS#11 module /usr/lib/softhsm/no-such-module.so cannot be loaded", "no such file"},
		},
		{
			name: "wrong PIN",
			args: []string{"--signer-key-uri", "pkcs11:token=castellan;object=ca?module-path=" + softHSMModule + "&pin-value=0000"},
			want: []string{"PKCS#11 module " + softHSMModule, "slot ", `token "castellan"`, "the PIN is incorrect"},
		},
		{
			name: "absent token",
			args: []string{"--signer-key-uri", "pkcs11:token=production;object=ca?module-path=" + softHSMModule + "&pin-value=1234"},
			want: []string{`no token "production"`, "tokens present"},
		},
		{
			name: "misspelt URI attribute",
			args: []string{"--signer-key-uri", "pkcs11:token=castellan;label=ca?module-path=" + softHSMModule},
			want: []string{"--signer-key-uri", "label: unknown or unsupported path attribute"},
		},
		{
			name: "Transit URI without a key",
			args: []string{"--signer-key-uri", "vault-transit://transit"},
			want: []string{"key: missing"},
		},
		{
			name: "upstream without Vault address",
			args: []string{"--upstream", "vault"},
			want: []string{"--vault-addr is required"},
		},
		{
			name: "Vault unreachable for a Transit key",
			args: []string{"--signer-key-uri", "vault-transit://transit/castellan-ca", "--vault-addr", "http://127.0.0.1:1", "--vault-token-file", tokenFile},
			want: []string{"vault-transit://transit/castellan-ca", "127.0.0.1:1", "connection refused"},
		},
		{
			name: "bad renew fraction",
			args: []string{"--upstream", "vault", "--vault-addr", "http://127.0.0.1:1", "--upstream-renew-fraction", "1.5"},
			want: []string{"--upstream-renew-fraction 1.5"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"ca", "--data-dir", dataDir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, authFlags...)
			args = append(args, tt.args...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = append(os.Environ(), "VAULT_TOKEN=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("castellan ca did not fail at start-up (err %v)\n%s", err, stderr.String())
			}
			out := stderr.String()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "pin-value=1234") || strings.Contains(out, "pin-value=0000") {
				t.Errorf("stderr shows the PIN:\n%s", out)
			}
			if strings.Contains(out, "CA serving") {
				t.Errorf("the CA started serving:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "root-cert.pem")); err == nil {
				t.Error("a root was created although the key store failed")
			}
		})
	}
}

// TestCommandUpstreamVault runs "castellan ca --upstream vault" with its
// intermediate key in SoftHSM2 and AppRole auth, all from flags.
func TestCommandUpstreamVault(t *testing.T) {
	softHSMToken(t, "castellan")
	v := harness.StartVault(t)
	root := v.EnablePKI(t)
	roleID, secretID := v.AppRole(t, time.Hour)
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := harness.Binary(t, "castellan")
	iss := newOfflineIssuer(t)
	authFlags := iss.flags()
	grpcPort, httpPort := harness.FreePort(t), harness.FreePort(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	args := append([]string{"ca",
		"--data-dir", dataDir,
		"--grpc-addr", "127.0.0.1:" + strconv.Itoa(grpcPort),
		"--http-addr", "127.0.0.1:" + strconv.Itoa(httpPort),
		"--signer-key-uri", softHSMURI("intermediate"),
		"--upstream", "vault",
		"--vault-addr", v.Addr,
		"--vault-auth", "approle",
		"--vault-approle-role-id", roleID,
		"--vault-approle-secret-id-file", secretFile,
		"--upstream-ttl", "2h",
		"--upstream-renew-fraction", "0.6",
	}, authFlags...)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	httpAddr := "127.0.0.1:" + strconv.Itoa(httpPort)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("castellan ca exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("castellan ca not ready after 60s\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	bundle, err := pemfile.ParseCertificates(fetchBundle(t, httpAddr))
	if err != nil || len(bundle) != 1 || !bundle[0].Equal(root) {
		t.Fatalf("/bundle is not Vault's root (%v)", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	token := iss.mint(t, "default", "sleep")
	ep := caEndpoint{
		grpcAddr: "127.0.0.1:" + strconv.Itoa(grpcPort), httpAddr: httpAddr, serverName: "localhost",
		trustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), roots: pool,
	}
	s, err := requestSVID(t, ep, token, "default", "sleep")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if len(s.chain) != 3 || !s.chain[2].Equal(root) {
		t.Fatal("the SVID does not chain through an intermediate to Vault's root")
	}
	if life := s.chain[1].NotAfter.Sub(s.chain[1].NotBefore); life < 2*time.Hour || life > 2*time.Hour+time.Minute {
		t.Errorf("intermediate lifetime %s, want --upstream-ttl 2h (plus Vault's backdating)", life)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "upstream-ca-key.pem")); !os.IsNotExist(err) {
		t.Error("a key file was written although the key is in the HSM")
	}
	if strings.Contains(stderr.String(), secretID) {
		t.Error("the logs show the AppRole secret ID")
	}

	// Rotate the root with "castellan ca rotate" while the CA runs. The
	// CA's AppRole may not create roots; the operator's token may.
	rootTokenFile := filepath.Join(t.TempDir(), "root-token")
	if err := os.WriteFile(rootTokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	rotate := func(want int, contains string, args ...string) string {
		t.Helper()
		args = append([]string{"ca", "rotate"}, append(args, "--data-dir", dataDir)...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != want || !strings.Contains(string(out), contains) {
			t.Fatalf("castellan %s: exit %d, want %d and output containing %q:\n%s", strings.Join(args, " "), code, want, contains, out)
		}
		return string(out)
	}
	rotate(0, "mode   upstream", "status")
	rotate(1, "permission denied", "prepare", "--vault-addr", v.Addr, "--vault-auth", "approle",
		"--vault-approle-role-id", roleID, "--vault-approle-secret-id-file", secretFile)
	rotate(2, "--vault-addr is required", "prepare")
	rotate(0, "phase  prepared", "prepare", "--vault-addr", v.Addr, "--vault-token-file", rootTokenFile, "--root-ttl", "8760h")
	harness.WaitFor(t, 15*time.Second, "/bundle to hold both roots", func() bool {
		b, err := pemfile.ParseCertificates(fetchBundle(t, httpAddr))
		return err == nil && len(b) == 2
	})
	rotate(1, "wait until", "activate")
	rotate(0, "phase  activated", "activate", "--root-propagation-delay", "1ms")
	var next *x509.Certificate
	for _, c := range mustParse(t, fetchBundle(t, httpAddr)) {
		if !c.Equal(root) {
			next = c
			pool.AddCert(c)
		}
	}
	harness.WaitFor(t, 15*time.Second, "an SVID under the new root", func() bool {
		s, err := requestSVID(t, ep, token, "default", "sleep")
		return err == nil && s.chain[len(s.chain)-1].Equal(next)
	})
	rotate(1, "may be valid until", "retire")
	rotate(0, "phase  steady", "retire", "--force")
	harness.WaitFor(t, 15*time.Second, "/bundle to hold only the new root", func() bool {
		b, err := pemfile.ParseCertificates(fetchBundle(t, httpAddr))
		return err == nil && len(b) == 1 && b[0].Equal(next)
	})
	out := rotate(0, `"phase": "steady"`, "status", "-o", "json")
	if !strings.Contains(out, `"issuer": "`) || strings.Count(out, `"serial"`) != 1 {
		t.Fatalf("status after retirement:\n%s", out)
	}
}

func mustParse(t testing.TB, pemBytes []byte) []*x509.Certificate {
	t.Helper()
	certs, err := pemfile.ParseCertificates(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}
