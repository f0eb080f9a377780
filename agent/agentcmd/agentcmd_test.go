package agentcmd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/castellan-mesh/castellan/agent"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, cfg agent.Config, gcPercent int)
		// wantErr is a substring of the usage error; "" means success.
		wantErr string
	}{
		{
			name: "defaults",
			check: func(t *testing.T, cfg agent.Config, gcPercent int) {
				if cfg.CAAddr != "castellan.castellan-system.svc:15012" || cfg.SDSSocket != agent.DefaultSDSSocket ||
					cfg.SocketMode != 0o600 || cfg.KeyType != agent.KeyECDSAP256 || cfg.HTTPAddr != "127.0.0.1:15020" {
					t.Errorf("defaults: %+v", cfg)
				}
				if gcPercent != 25 {
					t.Errorf("gc percent %d, want 25", gcPercent)
				}
				if cfg.Logger == nil {
					t.Error("no logger")
				}
			},
		},
		{
			name: "flags map to config fields",
			args: []string{"--ca-addr=ca:1", "--ca-server-name=ca.example", "--spiffe-id=spiffe://td/ns/a/sa/b",
				"--key-type=rsa-2048", "--socket-mode=0660", "--ttl=2h", "--rotate-jitter=0", "--pprof", "--gc-percent=0"},
			check: func(t *testing.T, cfg agent.Config, gcPercent int) {
				if cfg.CAAddr != "ca:1" || cfg.CAServerName != "ca.example" || cfg.SPIFFEID.String() != "spiffe://td/ns/a/sa/b" ||
					cfg.KeyType != agent.KeyRSA2048 || cfg.SocketMode != 0o660 || cfg.TTL != 2*time.Hour || !cfg.Pprof {
					t.Errorf("config: %+v", cfg)
				}
				if cfg.RotateJitter >= 0 {
					t.Errorf("--rotate-jitter=0 gave RotateJitter %v, want negative (none)", cfg.RotateJitter)
				}
				if gcPercent != 0 {
					t.Errorf("gc percent %d, want 0", gcPercent)
				}
			},
		},
		{
			name: "environment sets a flag",
			env:  map[string]string{"CASTELLAN_CA_ADDR": "env:2", "CASTELLAN_OUTPUT_DIR": "/out"},
			check: func(t *testing.T, cfg agent.Config, _ int) {
				if cfg.CAAddr != "env:2" || cfg.OutputDir != "/out" {
					t.Errorf("config: %+v", cfg)
				}
			},
		},
		{
			name: "flag wins over environment",
			args: []string{"--ca-addr=flag:3"},
			env:  map[string]string{"CASTELLAN_CA_ADDR": "env:2"},
			check: func(t *testing.T, cfg agent.Config, _ int) {
				if cfg.CAAddr != "flag:3" {
					t.Errorf("CAAddr %q, want flag:3", cfg.CAAddr)
				}
			},
		},
		{
			name: "node attestation",
			args: []string{"--attestation=node", "--node-name=n1", "--trust-domain=example.org", "--max-identities=7", "--proc-root=/host/proc"},
			check: func(t *testing.T, cfg agent.Config, _ int) {
				if cfg.Attestation != agent.AttestationNode || cfg.TrustDomain.Name() != "example.org" || cfg.MaxIdentities != 7 ||
					cfg.ProcRoot != "/host/proc" || cfg.SocketMode != 0o666 {
					t.Errorf("config: %+v", cfg)
				}
			},
		},
		{name: "node attestation without a node name", args: []string{"--attestation=node"}, wantErr: "--node-name"},
		{name: "unknown attestation", args: []string{"--attestation=k8s"}, wantErr: "--attestation"},
		{name: "bad trust domain", args: []string{"--attestation=node", "--node-name=n", "--trust-domain=A B"}, wantErr: "--trust-domain"},
		{name: "no identities", args: []string{"--attestation=node", "--node-name=n", "--max-identities=0"}, wantErr: "--max-identities"},
		{name: "socket open to others", args: []string{"--socket-mode=0666"}, wantErr: "lets any user"},
		{name: "socket not writable by owner", args: []string{"--socket-mode=0460"}, wantErr: "owner needs read and write"},
		{name: "socket mode not octal", args: []string{"--socket-mode=rw"}, wantErr: "want an octal file mode"},
		{name: "socket mode too large", args: []string{"--socket-mode=01777"}, wantErr: "want an octal file mode"},
		{name: "bad key type", args: []string{"--key-type=dsa"}, wantErr: "--key-type"},
		{name: "bad SPIFFE ID", args: []string{"--spiffe-id=https://x"}, wantErr: "--spiffe-id"},
		{name: "bad log level", args: []string{"--log-level=loud"}, wantErr: "--log-level"},
		{name: "negative GC percent", args: []string{"--gc-percent=-1"}, wantErr: "--gc-percent"},
		{name: "unknown flag", args: []string{"--bogus"}, wantErr: "unknown flag: --bogus"},
		{name: "bad log format", args: []string{"--log-format=xml"}, wantErr: "--log-format"},
		{name: "positional argument", args: []string{"serve"}, wantErr: `unexpected argument "serve"`},
		{name: "bad environment value", env: map[string]string{"CASTELLAN_TTL": "soon"}, wantErr: "CASTELLAN_TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			var stderr bytes.Buffer
			cfg, gc, err := parse("castellan-agent", tt.args, io.Discard, &stderr, lookup)
			if tt.wantErr != "" {
				var ue UsageError
				if !errors.As(err, &ue) || ue.ExitCode() != 2 || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg, gc)
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	_, _, err := parse("castellan-agent", []string{"-h"}, &stdout, &stderr, func(string) (string, bool) { return "", false })
	if !errors.Is(err, pflag.ErrHelp) || err.Error() != "" {
		t.Fatalf("err = %v, want pflag.ErrHelp with an empty message", err)
	}
	for _, want := range []string{"Usage:\n  castellan-agent [flags]", "--ca-addr", "--sds-socket", "--gc-percent", "--log-format", "--kubeconfig: KUBECONFIG"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, stdout.String())
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("help wrote to stderr: %s", stderr.String())
	}
}

// TestRunStops runs the agent with SDS and HTTP off until its context
// ends: Run binds, serves and returns nil.
func TestRunStops(t *testing.T) {
	dir := t.TempDir()
	// Long enough for a loaded machine to get as far as "agent running".
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	err := Run(ctx, "castellan-agent", []string{
		"--ca-addr=127.0.0.1:1", "--root-cert=" + filepath.Join(dir, "missing.pem"), "--token-file=" + filepath.Join(dir, "token"),
		"--sds-socket=" + filepath.Join(dir, "socket"), "--http-addr=-", "--gc-percent=0",
	}, io.Discard, &stderr)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"agent running"`) {
		t.Errorf("no start log:\n%s", stderr.String())
	}
}
