package kms

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, source, want, wantErr string
	}{
		{name: "pin", source: write("pin", "1234\n"), want: "1234"},
		{name: "crlf", source: write("crlf", "1234\r\n"), want: "1234"},
		{name: "empty", source: write("empty", "\n"), wantErr: "is empty"},
		{name: "missing", source: filepath.Join(dir, "nope"), wantErr: "cannot read the PIN"},
		{name: "too long", source: write("long", strings.Repeat("1", maxPINSize+1)), wantErr: "size limit"},
		// An endless source is refused, not read to the end.
		{name: "endless", source: "/dev/zero", wantErr: "size limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI("pkcs11:token=a;object=ca?pin-source=" + tt.source)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readPIN(u)
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "pin-source")):
				t.Fatalf("err = %v, want one about pin-source containing %q", err, tt.wantErr)
			case tt.wantErr == "" && (err != nil || got != tt.want):
				t.Fatalf("readPIN = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
