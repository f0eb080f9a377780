package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCARotateCommands(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := material.Open(ctx, material.Config{Dir: dir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"status", []string{"status"}, 0, "phase  steady"},
		{"early activate", []string{"activate"}, 1, "nothing to activate"},
		{"prepare", []string{"prepare"}, 0, "phase  prepared"},
		{"activate before propagation", []string{"activate"}, 1, "wait until"},
		{"activate forced", []string{"activate", "--force"}, 0, "phase  activated"},
		{"retire before old SVIDs expire", []string{"retire"}, 1, "may be valid until"},
		{"retire forced", []string{"retire", "--force"}, 0, "phase  steady"},
		{"unknown step", []string{"spin"}, 2, "unknown rotate step"},
		{"bad flag", []string{"status", "--bogus"}, 2, "unknown flag: --bogus"},
		{"flag of another step", []string{"status", "--force"}, 2, "unknown flag: --force"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"ca", "rotate"}, st.args...)
			args = append(args, "--data-dir", dir)
			if st.name == "unknown step" {
				args = []string{"ca", "rotate", "spin"}
			}
			code := run(ctx, args, &out, &errb)
			if code != st.code || !strings.Contains(out.String()+errb.String(), st.contains) {
				t.Fatalf("exit %d, want %d; output:\n%s%s", code, st.code, out.String(), errb.String())
			}
		})
	}
	var out bytes.Buffer
	if code := run(ctx, []string{"ca", "rotate", "status", "-o", "json", "--data-dir", dir}, &out, &out); code != 0 {
		t.Fatalf("json status: %s", out.String())
	}
	var st rotation.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || len(st.Roots) != 1 || st.Roots[0].State != rotation.RootActive {
		t.Fatalf("json status %s: %v", out.String(), err)
	}
}

func TestCARotateUpstreamErrors(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"unknown upstream", []string{"status", "--upstream", "acme"}, 2, `--upstream "acme"`},
		{"no upstream material", []string{"status", "--upstream", "vault"}, 1, "holds no upstream-signed intermediate"},
		{"bad format", []string{"status", "-o", "xml"}, 2, `invalid argument "xml" for "-o, --output" flag`},
		{"stray argument", []string{"status", "now"}, 2, `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"ca", "rotate"}, append(tt.args, "--data-dir", empty)...)
			if code := run(context.Background(), args, &out, &out); code != tt.code || !strings.Contains(out.String(), tt.contains) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tt.code, tt.contains, out.String())
			}
		})
	}
}

func TestCAFlagErrors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      string
		contains string
	}{
		{"bad trust domain", []string{"--trust-domain", "Not A Domain"}, "", "--trust-domain"},
		{"no authenticator", []string{"--token-review=false"}, "", "no authenticator"},
		{"jwks without issuer", []string{"--token-review=false", "--jwks-file", "x.json"}, "", "--jwks-file needs --jwt-issuer"},
		{"bad log level", []string{"--log-level", "loud"}, "", "--log-level"},
		{"bad duration", []string{"--max-ttl", "forever"}, "", `invalid argument "forever" for "--max-ttl" flag`},
		{"bad log format", []string{"--log-format", "xml"}, "", "--log-format"},
		{"unknown flag", []string{"--bogus"}, "", "castellan ca: unknown flag: --bogus\nRun 'castellan ca --help' for usage.\n"},
		{"kubernetes root rotated at once", []string{"--material=kubernetes", "--root-ttl", "24h", "--root-rotate-before", "24h"}, "", "--root-rotate-before 24h0m0s is not shorter than --root-ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"ca", "--data-dir", filepath.Join(t.TempDir(), "d")}, tt.args...)
			if code := run(context.Background(), args, &out, &out); code != 2 {
				t.Fatalf("exit %d, want 2:\n%s", code, out.String())
			}
			if !strings.Contains(out.String(), tt.contains) {
				t.Fatalf("output lacks %q:\n%s", tt.contains, out.String())
			}
		})
	}
}
