package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestPrintVersion(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want bool
	}{
		{name: "long", args: []string{"--version"}, want: true},
		{name: "single dash", args: []string{"-version"}, want: true},
		{name: "with other flags", args: []string{"--version", "--ca-addr=x:1"}, want: false},
		{name: "none", args: nil, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if got := printVersion(tt.args, &b); got != tt.want {
				t.Fatalf("printVersion(%q) = %v, want %v", tt.args, got, tt.want)
			}
			if tt.want && !strings.Contains(b.String(), "castellan-agent\n  version:  ") {
				t.Fatalf("output lacks the version:\n%s", b.String())
			}
			if !tt.want && b.Len() != 0 {
				t.Fatalf("wrote %q without being asked", b.String())
			}
		})
	}
}
