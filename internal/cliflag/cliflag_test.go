package cliflag

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantDir string
		wantTTL time.Duration
		wantAud []string
		wantErr bool
	}{
		{name: "defaults", wantDir: "/d", wantTTL: time.Hour, wantAud: []string{"istio-ca"}},
		{name: "env", env: map[string]string{"CASTELLAN_DATA_DIR": "/e", "CASTELLAN_DEFAULT_TTL": "2h", "CASTELLAN_TOKEN_AUDIENCE": "a, b"}, wantDir: "/e", wantTTL: 2 * time.Hour, wantAud: []string{"a", "b"}},
		{name: "flag wins", args: []string{"-data-dir", "/f", "-token-audience", "x", "-token-audience", "y"}, env: map[string]string{"CASTELLAN_DATA_DIR": "/e"}, wantDir: "/f", wantTTL: time.Hour, wantAud: []string{"x", "y"}},
		{name: "bad env", env: map[string]string{"CASTELLAN_DEFAULT_TTL": "soon"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			dir := fs.String("data-dir", "/d", "")
			ttl := fs.Duration("default-ttl", time.Hour, "")
			aud := NewStringList("istio-ca")
			fs.Var(aud, "token-audience", "")
			err := Parse(fs, "CASTELLAN", tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if *dir != tt.wantDir || *ttl != tt.wantTTL || !reflect.DeepEqual(aud.Values(), tt.wantAud) {
				t.Errorf("got %q %v %v", *dir, *ttl, aud.Values())
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
		{"help", flag.ErrHelp, 0, ""},
		{"help as a usage error", UsageError{flag.ErrHelp}, 0, ""},
		{"usage error", UsageError{errors.New("--ttl: bad")}, 2, "prog: --ttl: bad\n"},
		{"failure", fmt.Errorf("could not bind: %w", errors.New("in use")), 1, "prog: could not bind: in use\n"},
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
