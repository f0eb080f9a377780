package attest

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// statLine returns a /proc/<pid>/stat line for a process named comm that
// started at tick start.
func statLine(pid int, comm string, start string) string {
	fields := []string{"S", "1", "100", "100", "0", "-1", "4194560", "120", "0", "0", "0", "3", "1", "0", "0", "20", "0", "1", "0", start, "1234567", "300"}
	return strings.Join(append([]string{strconv.Itoa(pid), "(" + comm + ")"}, fields...), " ") + "\n"
}

func TestParseStartTime(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    uint64
		wantErr bool
	}{
		{name: "plain", stat: statLine(42, "sleep", "987654"), want: 987654},
		{name: "comm with spaces", stat: statLine(42, "my proc 1", "55"), want: 55},
		{name: "comm with parentheses", stat: statLine(42, "a) (b) S 1 2 3", "77"), want: 77},
		{name: "comm that is only a paren", stat: statLine(42, ")", "78"), want: 78},
		{name: "no trailing newline", stat: strings.TrimSuffix(statLine(42, "x", "9"), "\n"), want: 9},
		{name: "too few fields", stat: "42 (x) S 1 2 3\n", wantErr: true},
		{name: "no comm", stat: "42 x S 1 2 3", wantErr: true},
		{name: "not a number", stat: statLine(42, "x", "abc"), wantErr: true},
		{name: "negative", stat: statLine(42, "x", "-5"), wantErr: true},
		{name: "empty", stat: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStartTime([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("parseStartTime(%q) = %d, %v; want %d, error %v", tt.stat, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestStartTimeOfThisProcess(t *testing.T) {
	st, err := StartTime(DefaultProcRoot, int32(os.Getpid()))
	if err != nil || st == 0 {
		t.Fatalf("StartTime(self) = %d, %v", st, err)
	}
	if _, err := StartTime(DefaultProcRoot, 0); err == nil {
		t.Fatal("StartTime(0) succeeded")
	}
}

func TestReadLimited(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxStatSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := smallfile.Read(big, maxStatSize); !errors.Is(err, smallfile.ErrTooLarge) {
		t.Fatalf("readLimited of an oversized file: %v, want smallfile.ErrTooLarge", err)
	}
	exact := filepath.Join(dir, "exact")
	if err := os.WriteFile(exact, make([]byte, maxStatSize), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := smallfile.Read(exact, maxStatSize); err != nil || len(data) != maxStatSize {
		t.Fatalf("readLimited at the limit: %d bytes, %v", len(data), err)
	}
}

// FuzzParseStartTime checks that parseStartTime never panics and that a
// start time it returns is a field after the command name.
func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte(statLine(1, "init", "1")))
	f.Add([]byte(statLine(42, "a) (b", "77")))
	f.Add([]byte("42 (x) S 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseStartTime(data)
		if err != nil {
			return
		}
		s := string(data)
		rest := s[strings.LastIndexByte(s, ')')+1:]
		fields := strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '\n' })
		if len(fields) < 20 || !strings.Contains(rest, strconv.FormatUint(got, 10)) {
			t.Fatalf("parseStartTime(%q) = %d, not a field after the command name", data, got)
		}
	})
}
