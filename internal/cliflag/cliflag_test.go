package cliflag

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantDir    string
		wantTTL    time.Duration
		wantAud    []string
		wantKube   string
		wantErr    string
		wantNotice string
	}{
		{name: "defaults", wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}},
		{name: "env", env: map[string]string{"CASTELLAN_DATA_DIR": "/e", "CASTELLAN_DEFAULT_TTL": "2h", "CASTELLAN_TOKEN_AUDIENCE": "a, b"}, wantDir: "/e", wantTTL: 2 * time.Hour, wantAud: []string{"a", "b"}},
		{name: "flag wins", args: []string{"--data-dir", "/f", "--token-audience", "x", "--token-audience=y"}, env: map[string]string{"CASTELLAN_DATA_DIR": "/e"}, wantDir: "/f", wantTTL: time.Hour, wantAud: []string{"x", "y"}},
		{name: "bad env", env: map[string]string{"CASTELLAN_DEFAULT_TTL": "soon"}, wantErr: "CASTELLAN_DEFAULT_TTL"},
		{name: "standard variable", env: map[string]string{"KUBECONFIG": "/k"}, wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}, wantKube: "/k"},
		{name: "prefixed variable wins over the standard one", env: map[string]string{"KUBECONFIG": "/k", "CASTELLAN_KUBECONFIG": "/c"}, wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}, wantKube: "/c"},
		{name: "flag wins over both", args: []string{"--kubeconfig=/f"}, env: map[string]string{"KUBECONFIG": "/k", "CASTELLAN_KUBECONFIG": "/c"}, wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}, wantKube: "/f"},
		{name: "single-dash long flags", args: []string{"-data-dir", "/s", "-default-ttl=3h"}, wantDir: "/s", wantTTL: 3 * time.Hour, wantAud: []string{"istio-ca"}, wantNotice: "-data-dir is read as --data-dir"},
		{name: "a value that looks like a flag", args: []string{"--kubeconfig", "-data-dir"}, wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}, wantKube: "-data-dir"},
		{name: "unknown flag", args: []string{"--bogus"}, wantErr: "unknown flag: --bogus"},
		{name: "positional after --", args: []string{"--", "-data-dir"}, wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			fs := NewFlagSet("t", Help{}, io.Discard, &stderr)
			dir := fs.String("data-dir", "/d", "")
			ttl := fs.Duration("default-ttl", time.Hour, "")
			kube := fs.String("kubeconfig", "", "")
			StandardEnv(fs, "kubeconfig", "KUBECONFIG")
			aud := NewStringList("istio-ca")
			fs.Var(aud, "token-audience", "")
			err := Parse(fs, EnvPrefix, tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				var ue UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *dir != tt.wantDir || *ttl != tt.wantTTL || !reflect.DeepEqual(aud.Values(), tt.wantAud) || *kube != tt.wantKube {
				t.Errorf("got %q %v %v %q", *dir, *ttl, aud.Values(), *kube)
			}
			if got, want := FromStandardEnv(fs, "kubeconfig"), tt.wantKube == "/k"; got != want {
				t.Errorf("FromStandardEnv = %v, want %v", got, want)
			}
			if !strings.Contains(stderr.String(), tt.wantNotice) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.wantNotice)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	fs := NewFlagSet("castellan thing", Help{Summary: "Does the thing.", Exit: "3  the thing failed"}, &stdout, &stderr)
	fs.String("kubeconfig", "", "kubeconfig file")
	StandardEnv(fs, "kubeconfig", "KUBECONFIG")
	AddOutput(fs, OutputText, OutputText, OutputJSON)
	err := Parse(fs, EnvPrefix, []string{"--help"}, nil)
	if !errors.Is(err, pflag.ErrHelp) || ExitCode(&stderr, "castellan thing", err) != 0 {
		t.Fatalf("err = %v, want pflag.ErrHelp and exit 0", err)
	}
	if stderr.Len() != 0 {
		t.Errorf("help wrote to stderr: %q", stderr.String())
	}
	for _, want := range []string{"Usage:\n  castellan thing [flags]", "Does the thing.", "--kubeconfig", "-o, --output", "--kubeconfig: KUBECONFIG", "CASTELLAN_SOME_FLAG", "2  usage", "3  the thing failed"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, stdout.String())
		}
	}
	if strings.Contains(stdout.String(), "--format") {
		t.Errorf("help lists the deprecated --format:\n%s", stdout.String())
	}
}

func TestOutput(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		want     string
		wantErr  bool
		wantJSON bool // a parse error is reported as JSON
	}{
		{name: "default", want: "text"},
		{name: "short", args: []string{"-o", "json"}, want: "json"},
		{name: "short joined", args: []string{"-oyaml"}, want: "yaml"},
		{name: "long", args: []string{"--output=yaml"}, want: "yaml"},
		{name: "deprecated alias", args: []string{"--format", "json"}, want: "json"},
		{name: "environment", env: map[string]string{"CASTELLAN_OUTPUT": "json"}, want: "json"},
		{name: "deprecated variable", env: map[string]string{"CASTELLAN_FORMAT": "json"}, want: "json"},
		{name: "variable wins over the deprecated one", env: map[string]string{"CASTELLAN_FORMAT": "json", "CASTELLAN_OUTPUT": "yaml"}, want: "yaml"},
		{name: "flag wins over the deprecated variable", args: []string{"-o", "yaml"}, env: map[string]string{"CASTELLAN_FORMAT": "json"}, want: "yaml"},
		{name: "unknown format", args: []string{"-o", "xml"}, wantErr: true},
		{name: "error after -o json", args: []string{"-o", "json", "--bogus"}, wantErr: true, wantJSON: true},
		{name: "error before -o json", args: []string{"--bogus", "-o", "json"}, wantErr: true, wantJSON: true},
		{name: "error with json in the environment", args: []string{"--bogus"}, env: map[string]string{"CASTELLAN_OUTPUT": "json"}, wantErr: true, wantJSON: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := NewFlagSet("t", Help{}, io.Discard, io.Discard)
			o := AddOutput(fs, OutputText, OutputText, OutputJSON, OutputYAML)
			err := Parse(fs, EnvPrefix, tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				var stderr bytes.Buffer
				code := ExitCode(&stderr, "t", o.Errors(err))
				var e ErrorJSON
				isJSON := json.Unmarshal(stderr.Bytes(), &e) == nil
				if code != ExitUsage || isJSON != tt.wantJSON || (isJSON && (e.Code != ExitUsage || !strings.HasPrefix(e.Error, "t: "))) {
					t.Errorf("exit %d, stderr %q", code, stderr.String())
				}
				return
			}
			if o.Format() != tt.want {
				t.Errorf("format %q, want %q", o.Format(), tt.want)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantCode   int
		wantStderr string
	}{
		{"success", nil, 0, ""},
		{"help", pflag.ErrHelp, 0, ""},
		{"help as a usage error", UsageError{pflag.ErrHelp}, 0, ""},
		{"usage error", UsageError{errors.New("--ttl: bad")}, 2, "prog: --ttl: bad\nRun 'prog --help' for usage.\n"},
		{"failure", fmt.Errorf("could not bind: %w", errors.New("in use")), 1, "prog: could not bind: in use\n"},
		{"status without a message", StatusError{Code: 5}, 5, ""},
		{"status with a message", StatusError{Code: 4, Err: errors.New("2 policy problems")}, 4, "prog: 2 policy problems\n"},
		{"JSON", jsonError{StatusError{Code: 4, Err: errors.New(`bad "x"`)}}, 4, `{"error":"prog: bad \"x\"","code":4}` + "\n"},
		{"JSON usage", jsonError{UsageError{errors.New("bad")}}, 2, `{"error":"prog: bad","code":2}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := ExitCode(&stderr, "prog", tt.err); got != tt.wantCode || stderr.String() != tt.wantStderr {
				t.Errorf("ExitCode = %d, stderr %q; want %d, %q", got, stderr.String(), tt.wantCode, tt.wantStderr)
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	for _, format := range []string{LogJSON, LogText} {
		var buf bytes.Buffer
		log, err := NewLogger(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("m", "wait", 90*time.Second, slog.Group("g", "d", 1500*time.Millisecond))
		if !strings.Contains(buf.String(), "1m30s") || !strings.Contains(buf.String(), "1.5s") || strings.Contains(buf.String(), "90000000000") {
			t.Errorf("%s: durations not written as Go durations: %s", format, buf.String())
		}
	}
	if _, err := NewLogger(io.Discard, "info", "xml"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: err = %v", err)
	}
	if _, err := NewLogger(io.Discard, "loud", "json"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: err = %v", err)
	}
}
