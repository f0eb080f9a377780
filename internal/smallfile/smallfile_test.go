package smallfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", n)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		want    int
		wantErr error
	}{
		{name: "under", path: write("under", 10), want: 10},
		{name: "at the limit", path: write("at", 16), want: 16},
		{name: "empty", path: write("empty", 0), want: 0},
		{name: "over", path: write("over", 17), wantErr: smallfile.ErrTooLarge},
		{name: "endless", path: "/dev/zero", wantErr: smallfile.ErrTooLarge},
		{name: "missing", path: filepath.Join(dir, "nope"), wantErr: fs.ErrNotExist},
		{name: "directory", path: dir, wantErr: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := smallfile.Read(tt.path, 16)
			switch {
			case tt.name == "directory":
				if err == nil || !strings.Contains(err.Error(), dir) {
					t.Fatalf("err = %v, want an error naming %s", err, dir)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.path) {
					t.Fatalf("err = %v, want %v naming %s", err, tt.wantErr, tt.path)
				}
			case err != nil || len(b) != tt.want:
				t.Fatalf("Read = %d bytes, %v; want %d", len(b), err, tt.want)
			}
		})
	}
}
