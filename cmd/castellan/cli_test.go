package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// runCLI runs castellan with args and returns its exit status and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestHelp checks that every command, subcommand and step prints its help
// on stdout and exits 0, listing its own flags and not those of its
// siblings.
func TestHelp(t *testing.T) {
	tests := []struct {
		args    []string
		want    []string // in stdout
		notWant []string
	}{
		{args: []string{"--help"}, want: []string{"usage: castellan <command>", "Exit status:", "6  cert inspect: invalid", "KUBECONFIG", "SPIFFE_ENDPOINT_SOCKET"}},
		{args: []string{"-h"}, want: []string{"usage: castellan <command>"}},
		{args: []string{"help"}, want: []string{"usage: castellan <command>"}},
		{args: []string{"ca", "--help"}, want: []string{"--data-dir", "--log-format", "--vault-addr", "--kubeconfig: KUBECONFIG", "--vault-addr: VAULT_ADDR", "--vault-ca-cert: VAULT_CACERT"}, notWant: []string{"--force"}},
		{args: []string{"ca", "rotate", "--help"}, want: []string{"prepare|activate|retire|status"}},
		{args: []string{"ca", "rotate", "prepare", "--help"}, want: []string{"--from", "--root-ttl", "--signer-key-uri", "-o, --output"}, notWant: []string{"--force"}},
		{args: []string{"ca", "rotate", "activate", "--help"}, want: []string{"--force", "--root-propagation-delay"}, notWant: []string{"--from", "--root-ttl"}},
		{args: []string{"ca", "rotate", "retire", "-h"}, want: []string{"--force", "--max-ttl"}, notWant: []string{"--from"}},
		{args: []string{"ca", "rotate", "status", "--help"}, want: []string{"-o, --output", "--data-dir"}, notWant: []string{"--force", "--from", "--format"}},
		{args: []string{"agent", "--help"}, want: []string{"castellan agent [flags]", "--ca-addr", "--log-format"}},
		{args: []string{"authz", "--help"}, want: []string{"translate", "serve"}},
		{args: []string{"authz", "translate", "--help"}, want: []string{"--policies", "-o, --output", "4  some policies were rejected"}, notWant: []string{"--source-principal"}},
		{args: []string{"authz", "check", "--help"}, want: []string{"--source-principal", "3  the request is denied"}},
		{args: []string{"authz", "mtls", "--help"}, want: []string{"--listener"}, notWant: []string{"--source-principal"}},
		{args: []string{"authz", "serve", "--help"}, want: []string{"--xds-addr", "--workload-api-socket: SPIFFE_ENDPOINT_SOCKET", "--log-format"}, notWant: []string{"--policies"}},
		{args: []string{"cert", "--help"}, want: []string{"castellan cert inspect"}},
		{args: []string{"cert", "inspect", "--help"}, want: []string{"--secret", "5  warnings", "6  invalid"}},
		{args: []string{"bench", "--help"}, want: []string{"ca|sds|token"}},
		{args: []string{"bench", "ca", "--help"}, want: []string{"--concurrency", "-o, --output"}, notWant: []string{"--streams", "--out-dir"}},
		{args: []string{"bench", "sds", "--help"}, want: []string{"--streams"}, notWant: []string{"--concurrency"}},
		{args: []string{"bench", "token", "--help"}, want: []string{"--out-dir"}, notWant: []string{"--streams"}},
		{args: []string{"demo", "--help"}, want: []string{"--data-dir", "--log-format"}},
		{args: []string{"version", "--help"}, want: []string{"-o, --output"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != 0 || stderr != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing on stderr", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("help lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(stdout, w) {
					t.Errorf("help lists %q, which is not this command's:\n%s", w, stdout)
				}
			}
		})
	}
}

// TestUsageErrors checks that a bad flag, argument or subcommand exits 2
// and prints its error once, on stderr, without the whole usage.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"ca", "--bogus"}, "castellan ca: unknown flag: --bogus"},
		{[]string{"ca", "rotate", "status", "--bogus"}, "castellan ca: unknown flag: --bogus"},
		{[]string{"ca", "rotate", "status", "--force"}, "unknown flag: --force"},
		{[]string{"ca", "rotate", "spin"}, `unknown rotate step "spin"`},
		{[]string{"agent", "--bogus"}, "castellan agent: unknown flag: --bogus"},
		{[]string{"authz", "check", "--bogus"}, "castellan authz: unknown flag: --bogus"},
		{[]string{"authz", "nope"}, `unknown subcommand "nope"`},
		{[]string{"cert", "inspect", "--bogus"}, "castellan cert: unknown flag: --bogus"},
		{[]string{"bench", "ca", "--bogus"}, "castellan bench: unknown flag: --bogus"},
		{[]string{"bench", "nope"}, `unknown bench "nope"`},
		{[]string{"demo", "--bogus"}, "castellan demo: unknown flag: --bogus"},
		{[]string{"version", "--bogus"}, "castellan version: unknown flag: --bogus"},
		{[]string{"version", "extra"}, "version takes no arguments"},
		{[]string{"nope"}, `unknown command "nope"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != cliflag.ExitUsage {
				t.Errorf("exit %d, want %d", code, cliflag.ExitUsage)
			}
			if strings.Count(stderr, tt.want) != 1 || strings.Contains(stderr, "Flags:") {
				t.Errorf("stderr should hold %q once, without the usage:\n%s", tt.want, stderr)
			}
			if !strings.Contains(stderr, "--help' for usage.") {
				t.Errorf("stderr does not say where the usage is:\n%s", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout: %q", stdout)
			}
		})
	}
}

// TestJSONErrors checks that under -o json (or CASTELLAN_OUTPUT=json) an
// error is one JSON object on stderr with the exit status in it.
func TestJSONErrors(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string // in the error message
	}{
		{"usage", []string{"version", "-o", "json", "extra"}, nil, 2, "version takes no arguments"},
		{"unknown flag before -o", []string{"version", "--bogus", "-o", "json"}, nil, 2, "unknown flag: --bogus"},
		{"from the environment", []string{"version", "--bogus"}, map[string]string{"CASTELLAN_OUTPUT": "json"}, 2, "unknown flag: --bogus"},
		{"failure", []string{"ca", "rotate", "status", "-o", "json", "--upstream", "vault", "--data-dir", empty}, nil, 1, "holds no upstream-signed intermediate"},
		{"missing flag", []string{"authz", "check", "-o", "json", "--workload", "a/b"}, nil, 2, "--policies is required"},
		{"missing file", []string{"cert", "inspect", "-o", "json", filepath.Join(empty, "none.pem")}, nil, 1, "none.pem"},
		{"bench", []string{"bench", "token", "-o", "json"}, nil, 2, "--out-dir is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCLI(t, tt.args...)
			var e cliflag.ErrorJSON
			dec := json.NewDecoder(strings.NewReader(stderr))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || dec.More() {
				t.Fatalf("stderr is not one JSON object (%v):\n%s", err, stderr)
			}
			if code != tt.code || e.Code != tt.code || !strings.Contains(e.Error, tt.want) || !strings.HasPrefix(e.Error, "castellan ") {
				t.Errorf("exit %d, error %+v; want %d and a message with %q", code, e, tt.code, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout: %q", stdout)
			}
		})
	}
}

// TestOutputFormats checks -o on the commands with structured output.
func TestOutputFormats(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"version", "-o", "json"}, `"goVersion": "go`},
		{[]string{"version", "-o", "yaml"}, "goVersion: go"},
		{[]string{"version"}, "go:       go"},
		{[]string{"bench", "token", "--out-dir", dir, "--count", "2", "-o", "json"}, `"count": 2`},
		{[]string{"bench", "token", "--out-dir", dir, "--count", "2", "-o", "yaml"}, "count: 2"},
		{[]string{"bench", "token", "--out-dir", dir, "--count", "2"}, "wrote " + filepath.Join(dir, "jwks.json") + " and 2 tokens"},
		{append([]string{"authz", "check", "-o", "yaml", "--source-principal", "spiffe://cluster.local/ns/ingress/sa/gateway", "--host", "shop.example.com"}, frontend...), "decision: ALLOW"},
		{append([]string{"authz", "mtls", "-o", "yaml"}, frontend...), "workload: shop/fe"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != 0 || !strings.Contains(stdout, tt.want) {
				t.Errorf("exit %d, stdout lacks %q:\n%s\nstderr:\n%s", code, tt.want, stdout, stderr)
			}
		})
	}
}

// TestEnvironment checks the one CASTELLAN_ prefix and the standard
// variables, and that the flag wins over its CASTELLAN_ variable, which
// wins over the standard one.
func TestEnvironment(t *testing.T) {
	tmp := t.TempDir()
	kubeA, kubeB, kubeC := filepath.Join(tmp, "a.kubeconfig"), filepath.Join(tmp, "b.kubeconfig"), filepath.Join(tmp, "c.kubeconfig")
	tokenFile := filepath.Join(tmp, "vault-token")
	if err := os.WriteFile(tokenFile, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	rotateKube := []string{"ca", "rotate", "status", "--material=kubernetes"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		code    int
		want    string // in stdout+stderr
		notWant string
	}{
		{"KUBECONFIG", rotateKube, map[string]string{"KUBECONFIG": kubeA}, 1, kubeA, ""},
		{"CASTELLAN_KUBECONFIG wins over KUBECONFIG", rotateKube, map[string]string{"KUBECONFIG": kubeA, "CASTELLAN_KUBECONFIG": kubeB}, 1, kubeB, kubeA},
		{"the flag wins over both", append(rotateKube, "--kubeconfig", kubeC), map[string]string{"KUBECONFIG": kubeA, "CASTELLAN_KUBECONFIG": kubeB}, 1, kubeC, kubeB},
		{"cert inspect reads KUBECONFIG", []string{"cert", "inspect", "--secret", "a/b"}, map[string]string{"KUBECONFIG": kubeA}, 1, kubeA, ""},
		{"VAULT_ADDR", []string{"ca", "rotate", "prepare", "--upstream", "vault", "--data-dir", tmp}, map[string]string{"VAULT_ADDR": "http://127.0.0.1:1"}, 1, "holds no upstream-signed intermediate", "--vault-addr is required"},
		{"VAULT_CACERT", []string{"ca", "--data-dir", filepath.Join(tmp, "ca"), "--upstream", "vault", "--token-review=false", "--jwt-issuer", "https://issuer.test", "--jwks-file", jwks(t), "--vault-token-file", tokenFile},
			map[string]string{"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_CACERT": filepath.Join(tmp, "no-ca.pem")}, 2, "no-ca.pem", ""},
		{"SPIFFE_ENDPOINT_SOCKET", []string{"authz", "serve"}, map[string]string{"SPIFFE_ENDPOINT_SOCKET": "bogus://socket"}, 1, "--workload-api-socket bogus://socket", ""},
		{"certificate files win over SPIFFE_ENDPOINT_SOCKET", []string{"authz", "serve", "--cert-dir", tmp}, map[string]string{"SPIFFE_ENDPOINT_SOCKET": "bogus://socket"}, 1, "cert-chain.pem", "workload-api"},
		{"CASTELLAN_ prefix for bench", []string{"bench", "token", "--count", "1"}, map[string]string{"CASTELLAN_OUT_DIR": filepath.Join(tmp, "bench")}, 0, "1 tokens to " + filepath.Join(tmp, "bench"), ""},
		{"CASTELLAN_ prefix for the demo", []string{"demo"}, map[string]string{"CASTELLAN_LOG_FORMAT": "xml"}, 2, "--log-format", ""},
		{"bad value names the variable", []string{"ca", "rotate", "status"}, map[string]string{"CASTELLAN_MAX_TTL": "soon"}, 2, "CASTELLAN_MAX_TTL", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"KUBECONFIG", "CASTELLAN_KUBECONFIG", "VAULT_ADDR", "VAULT_CACERT", "VAULT_TOKEN", "SPIFFE_ENDPOINT_SOCKET"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCLI(t, tt.args...)
			out := stdout + stderr
			if code != tt.code || !strings.Contains(out, tt.want) || (tt.notWant != "" && strings.Contains(out, tt.notWant)) {
				t.Errorf("exit %d, want %d; output should have %q and not %q:\n%s", code, tt.code, tt.want, tt.notWant, out)
			}
		})
	}
}

// TestValidationBeforeWrite checks that flags that cannot work are refused
// before the CA writes anything to its data directory.
func TestValidationBeforeWrite(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	offline := []string{"--token-review=false", "--jwt-issuer", "https://issuer.test", "--jwks-file", jwks(t)}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"upstream vault without --vault-addr", []string{"--upstream", "vault"}, "--vault-addr is required"},
		{"upstream vault without --vault-addr, offline tokens", append([]string{"--upstream", "vault"}, offline...), "--vault-addr is required"},
		{"upstream vault without a token", append([]string{"--upstream", "vault", "--vault-addr", "http://127.0.0.1:1"}, offline...), "--vault-auth=token needs"},
		{"vault CA file missing", append([]string{"--upstream", "vault", "--vault-addr", "http://127.0.0.1:1", "--vault-token-file", tokenFile, "--vault-ca-cert", "/nonexistent/ca.pem"}, offline...), "/nonexistent/ca.pem"},
		{"transit key without --vault-addr", append([]string{"--signer-key-uri", "vault-transit://transit/ca"}, offline...), "--vault-addr is required"},
		{"unknown upstream", []string{"--upstream", "acme"}, `--upstream "acme"`},
		{"bad key algorithm", append([]string{"--signer-key-algorithm", "dsa"}, offline...), "--signer-key-algorithm"},
		{"bad renew fraction", []string{"--upstream", "vault", "--upstream-renew-fraction", "2"}, "--upstream-renew-fraction"},
		{"material and upstream", []string{"--material", "kubernetes", "--upstream", "vault", "--vault-addr", "http://127.0.0.1:1", "--vault-token-file", tokenFile}, "choose one"},
		{"bad node agent", append([]string{"--node-agent-service-account", "nope"}, offline...), "--node-agent-service-account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("VAULT_TOKEN", "")
			os.Unsetenv("VAULT_TOKEN")
			dir := t.TempDir()
			code, stdout, stderr := runCLI(t, append([]string{"ca", "--data-dir", dir}, tt.args...)...)
			if code != cliflag.ExitUsage || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, want %d with %q:\n%s%s", code, cliflag.ExitUsage, tt.want, stdout, stderr)
			}
			entries, err := os.ReadDir(dir)
			if err != nil || len(entries) != 0 {
				t.Errorf("the data directory is not empty: %v %v", entries, err)
			}
		})
	}
}

// TestDemoDataDir checks that the demo creates its --data-dir (and its
// parents) and keeps the CA material there.
func TestDemoDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	code, stdout, stderr := runCLI(t, "demo", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca", "root-cert.pem")); err != nil {
		t.Errorf("no CA material in --data-dir: %v", err)
	}
}

// TestPoliciesFromStdin checks --policies -.
func TestPoliciesFromStdin(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(authzTestdata, "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = old }()
	code, stdout, stderr := runCLI(t, "authz", "check", "--policies", "-", "--workload", "shop/fe", "--labels", "app=frontend,version=v2",
		"--source-principal", "spiffe://cluster.local/ns/ingress/sa/gateway", "--host", "shop.example.com")
	if code != 0 || !strings.HasPrefix(stdout, "ALLOW") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "authz", "check", "--policies", "-", "--policies", "-", "--workload", "shop/fe")
	if code != cliflag.ExitUsage || !strings.Contains(stderr, "may be given once") {
		t.Errorf("stdin twice: exit %d: %s", code, stderr)
	}
}

// jwks writes a JWKS for an offline JWT issuer and returns its path.
func jwks(t *testing.T) string {
	t.Helper()
	m, err := authn.NewMinter("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := m.WriteJWKS(p); err != nil {
		t.Fatal(err)
	}
	return p
}
