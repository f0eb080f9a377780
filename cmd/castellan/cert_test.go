package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// certFixture writes a root, and leaves issued by it, to a temp dir.
type certFixture struct {
	dir                       string
	root, rootKey             string
	valid, validKey           string
	warning, expired, garbage string
	rootCert                  *x509.Certificate
	validPair                 tls.Certificate
}

func newCertFixture(t *testing.T) *certFixture {
	t.Helper()
	f := &certFixture{dir: t.TempDir()}
	now := time.Now()
	root := testpki.NewCA(t, "root")
	rootKey := root.Key
	f.rootCert = root.Cert
	f.root = testpki.WriteFile(t, f.dir, "root.pem", testpki.CertPEM(f.rootCert))
	f.rootKey = testpki.WriteFile(t, f.dir, "root-key.pem", testpki.KeyPEM(t, rootKey))

	leaf := func(name string, notBefore time.Time, lifetime time.Duration) (string, string, *x509.Certificate, *ecdsa.PrivateKey) {
		k := testpki.Key(t)
		u, _ := url.Parse("spiffe://example.test/ns/default/sa/" + name)
		c := testpki.Create(t, &x509.Certificate{
			SerialNumber: big.NewInt(2), NotBefore: notBefore, NotAfter: notBefore.Add(lifetime),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:        []*url.URL{u}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}, f.rootCert, k.Public(), rootKey)
		certPath := testpki.WriteFile(t, f.dir, name+".pem", testpki.CertPEM(c))
		keyPath := testpki.WriteFile(t, f.dir, name+"-key.pem", testpki.KeyPEM(t, k))
		return certPath, keyPath, c, k
	}
	var (
		validCert *x509.Certificate
		validKey  *ecdsa.PrivateKey
	)
	f.valid, f.validKey, validCert, validKey = leaf("valid", now.Add(-time.Minute), time.Hour)
	f.validPair = tls.Certificate{Certificate: [][]byte{validCert.Raw}, PrivateKey: validKey}
	f.warning, _, _, _ = leaf("warning", now.Add(-55*time.Minute), time.Hour)
	f.expired, _, _, _ = leaf("expired", now.Add(-2*time.Hour), time.Hour)
	f.garbage = testpki.WriteFile(t, f.dir, "garbage.pem", []byte("-----BEGIN CERTIFICATE-----\n\x00\xff garbage\n"))
	return f
}

func TestCertInspectExitCodes(t *testing.T) {
	f := newCertFixture(t)
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantOut    []string
		wantStderr string
	}{
		{name: "valid", args: []string{f.valid, "--bundle", f.root, "--key", f.validKey}, wantCode: 0,
			wantOut: []string{"Status               VALID", "verified: chain[0] -> bundle[0]", "matches chain[0]"}},
		{name: "flags before the file", args: []string{"--bundle", f.root, f.valid}, wantCode: 0},
		{name: "warning", args: []string{f.warning, "--bundle", f.root}, wantCode: exitCertWarning, wantOut: []string{"low-lifetime"}},
		{name: "expired", args: []string{f.expired, "--bundle", f.root}, wantCode: exitCertInvalid, wantOut: []string{"expired"}},
		{name: "key does not match", args: []string{f.valid, "--key", f.rootKey}, wantCode: exitCertInvalid, wantOut: []string{"DOES NOT MATCH"}},
		{name: "wrong bundle", args: []string{f.valid, "--bundle", f.warning}, wantCode: exitCertInvalid, wantOut: []string{"verify-failed", "missing-intermediate"}},
		{name: "short", args: []string{f.valid, "--short"}, wantCode: 0, wantOut: []string{"chain[0]  leaf  VALID  spiffe://example.test/ns/default/sa/valid"}},
		{name: "json from the environment", args: []string{f.valid}, env: map[string]string{"CASTELLAN_OUTPUT": "json"}, wantCode: 0, wantOut: []string{`"schema_version": 1`}},
		{name: "yaml", args: []string{f.valid, "-o", "yaml"}, wantCode: 0, wantOut: []string{"schema_version: 1"}},
		{name: "KUBECONFIG set, a file inspected", args: []string{f.valid}, env: map[string]string{"KUBECONFIG": "/nonexistent", "CASTELLAN_CONTEXT": "x"}, wantCode: 0},
		{name: "--kubeconfig without --secret", args: []string{f.valid, "--kubeconfig", "/k"}, wantCode: 2, wantStderr: "apply only to --secret"},
		{name: "deprecated --format", args: []string{f.valid, "--format", "json"}, wantCode: 0, wantOut: []string{`"schema_version": 1`}, wantStderr: "Flag --format has been deprecated, use -o/--output"},
		{name: "file after --", args: []string{"--bundle", f.root, "--", f.valid}, wantCode: 0},
		{name: "garbage", args: []string{f.garbage}, wantCode: 1, wantStderr: "PEM block 1 at line 1 is malformed"},
		{name: "missing file", args: []string{filepath.Join(f.dir, "none.pem")}, wantCode: 1, wantStderr: "no such file"},
		{name: "missing bundle", args: []string{f.valid, "--bundle", filepath.Join(f.dir, "none.pem")}, wantCode: 1, wantStderr: "no such file"},
		{name: "no source", args: nil, wantCode: 2, wantStderr: "nothing to inspect"},
		{name: "two sources", args: []string{f.valid, "--tls", "127.0.0.1:1"}, wantCode: 2, wantStderr: "choose one source, not FILE and --tls"},
		{name: "two files", args: []string{f.valid, f.root}, wantCode: 2, wantStderr: "one FILE at most"},
		{name: "bad format", args: []string{f.valid, "-o", "xml"}, wantCode: 2, wantStderr: `invalid argument "xml" for "-o, --output" flag: want text, json or yaml`},
		{name: "short with json", args: []string{f.valid, "--short", "-o", "json"}, wantCode: 2, wantStderr: `{"error":"castellan cert: --short is a text format; it cannot be combined with -o json","code":2}`},
		{name: "error as JSON", args: []string{filepath.Join(f.dir, "none.pem"), "-o", "json"}, wantCode: 1, wantStderr: `{"error":"castellan cert: `},
		{name: "client cert without key", args: []string{"--tls", "127.0.0.1:1", "--client-cert", f.valid}, wantCode: 2, wantStderr: "go together"},
		{name: "client cert without --tls", args: []string{f.valid, "--client-cert", f.valid, "--client-key", f.validKey}, wantCode: 2, wantStderr: "apply only to --tls"},
		{name: "bad secret name", args: []string{"--secret", "justaname"}, wantCode: 2, wantStderr: "want NAMESPACE/NAME"},
		{name: "sds without unix scheme", args: []string{"--sds", "/tmp/sock"}, wantCode: 2, wantStderr: "want unix:///path/to/socket"},
		{name: "unknown flag", args: []string{f.valid, "--frobnicate"}, wantCode: 2, wantStderr: "castellan cert: unknown flag: --frobnicate\nRun 'castellan cert --help' for usage.\n"},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantOut: []string{"Exit status:\n  0  success\n  1  error\n  2  usage: a bad flag or argument\n  5  warnings\n  6  invalid\n"}},
		{name: "nothing on the socket", args: []string{"--sds", "unix://" + filepath.Join(f.dir, "none.sock"), "--timeout", "2s"}, wantCode: 1, wantStderr: "source: SDS"},
		{name: "nothing on the Workload API socket", args: []string{"--workload-api", "unix://" + filepath.Join(f.dir, "none.sock"), "--timeout", "2s"}, wantCode: 1, wantStderr: "source: fetching X.509 context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"cert", "inspect"}, tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, stderr.String())
			}
			if bytes.Contains(stdout.Bytes(), []byte("\x1b[")) {
				t.Error("colour written to a non-terminal")
			}
			if bytes.Contains(stdout.Bytes(), []byte("PRIVATE KEY")) || bytes.Contains(stderr.Bytes(), []byte("PRIVATE KEY")) {
				t.Error("a private key reached the output")
			}
		})
	}
}

func TestCertInspectStdinJSON(t *testing.T) {
	f := newCertFixture(t)
	data, err := os.ReadFile(f.valid)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err = runCertInspect(context.Background(), []string{"-", "-o", "json", "--bundle", f.root}, bytes.NewReader(data), &stdout, &stderr)
	if err != nil {
		t.Fatalf("err = %v, stderr %s", err, stderr.String())
	}
	var r inspect.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if r.Source != "stdin" || r.Status != inspect.StatusValid || !r.Verification.Chain.Verified || len(r.Certificates) != 1 {
		t.Errorf("report = %+v", r)
	}
}

func TestCertInspectTLS(t *testing.T) {
	f := newCertFixture(t)
	addr := testpki.ServeTLS(t, &tls.Config{Certificates: []tls.Certificate{f.validPair}})
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"cert", "inspect", "--tls", addr, "--bundle", f.root, "--short"}, &stdout, &stderr)
	if code != 0 || !strings.Contains(stdout.String(), "spiffe://example.test/ns/default/sa/valid") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
}

func TestCertSubcommands(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want int
	}{
		{"no subcommand", []string{"cert"}, 2},
		{"unknown subcommand", []string{"cert", "frob"}, 2},
		{"help", []string{"cert", "help"}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != tt.want {
				t.Errorf("exit code = %d, want %d (stderr %s)", code, tt.want, stderr.String())
			}
		})
	}
}
