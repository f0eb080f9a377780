package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/authn"
)

func TestCAAuthFlagErrors(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := authn.NewMinter("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(dir, "jwks.json")
	if err := m.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	offline := []string{"--token-review=false", "--jwt-issuer", "https://issuer.test", "--jwks-file", jwks, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"zero QPS", []string{"--kubeconfig", kubeconfig, "--kube-api-qps", "0"}, 2, "--kube-api-qps"},
		{"offline bound tokens without the watch", []string{"--kubeconfig", kubeconfig, "--watch-revocation=false"}, 2, "needs --watch-revocation"},
		{"pprof on all interfaces", append([]string{"--pprof", "--pprof-addr", ":0"}, offline...), 1, "loopback"},
		{"pprof on a routable address", append([]string{"--pprof", "--pprof-addr", "192.0.2.1:0"}, offline...), 1, "loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"ca", "--data-dir", filepath.Join(t.TempDir(), "d")}, tt.args...)
			if code := run(context.Background(), args, &out, &out); code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tt.code, out.String())
			}
			if !strings.Contains(out.String(), tt.contains) {
				t.Fatalf("output lacks %q:\n%s", tt.contains, out.String())
			}
		})
	}
}
