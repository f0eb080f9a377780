package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{name: "help", args: []string{"-h"}, code: 0, contains: "Usage of castellan-agent"},
		{name: "unknown flag", args: []string{"--bogus"}, code: 2, contains: "castellan-agent: flag provided but not defined: -bogus"},
		{name: "bad socket mode", args: []string{"--socket-mode=0777"}, code: 2, contains: "castellan-agent: --socket-mode 0777 lets any user"},
		{name: "positional argument", args: []string{"agent"}, code: 2, contains: `castellan-agent: unexpected argument "agent"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.contains) {
				t.Fatalf("exit %d, want %d; stderr lacks %q:\n%s", code, tt.code, tt.contains, stderr.String())
			}
		})
	}
}
