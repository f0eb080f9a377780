package filewatch_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/filewatch"
)

// recorder is the user of a Watcher in these tests: it accepts content
// that does not start with "bad", and records what it loaded and what was
// reported.
type recorder struct {
	loaded   []string
	reported []string
}

func (r *recorder) load(b []byte) error {
	if strings.HasPrefix(string(b), "bad") {
		return errors.New("content starts with bad: " + string(b))
	}
	r.loaded = append(r.loaded, string(b))
	return nil
}

func (r *recorder) report(err error) { r.reported = append(r.reported, err.Error()) }

func TestWatcher(t *testing.T) {
	// Each step writes the file (or removes it, for "-"; or leaves it, for
	// ""), checks once, and says what must have been loaded and reported
	// by then, in all.
	type step struct {
		write        string
		wantLoaded   int
		wantReported int
	}
	tests := []struct {
		name         string
		mayBeMissing bool
		steps        []step
	}{
		{name: "loads each change once", steps: []step{
			{write: "a", wantLoaded: 1}, {write: "", wantLoaded: 1}, {write: "b", wantLoaded: 2}, {write: "b", wantLoaded: 2},
		}},
		{name: "invalid content keeps the last good and is reported once", steps: []step{
			{write: "a", wantLoaded: 1}, {write: "bad1", wantLoaded: 1, wantReported: 1}, {write: "", wantLoaded: 1, wantReported: 1},
			{write: "bad2", wantLoaded: 1, wantReported: 2}, {write: "a", wantLoaded: 1, wantReported: 2}, {write: "c", wantLoaded: 2, wantReported: 2},
		}},
		{name: "missing file is an error", steps: []step{
			{write: "-", wantReported: 1}, {write: "-", wantReported: 1}, {write: "a", wantLoaded: 1, wantReported: 1},
		}},
		{name: "may be missing until it exists", mayBeMissing: true, steps: []step{
			{write: "-"}, {write: "a", wantLoaded: 1}, {write: "-", wantLoaded: 1, wantReported: 1}, {write: "-", wantLoaded: 1, wantReported: 1},
			{write: "b", wantLoaded: 2, wantReported: 1},
		}},
		{name: "over the size limit", steps: []step{
			{write: strings.Repeat("x", 65), wantReported: 1}, {write: strings.Repeat("x", 64), wantLoaded: 1, wantReported: 1},
		}},
		{name: "the same error again after a success is reported again", steps: []step{
			{write: "bad", wantReported: 1}, {write: "a", wantLoaded: 1, wantReported: 1}, {write: "bad", wantLoaded: 1, wantReported: 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bundle.pem")
			var r recorder
			w, err := filewatch.New(filewatch.Config{Path: path, MaxSize: 64, Interval: time.Hour, Load: r.load, Report: r.report, MayBeMissing: tt.mayBeMissing})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				switch s.write {
				case "":
				case "-":
					if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
						t.Fatal(err)
					}
				default:
					if err := os.WriteFile(path, []byte(s.write), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				w.Check()
				if len(r.loaded) != s.wantLoaded || len(r.reported) != s.wantReported {
					t.Fatalf("after step %d (%q): loaded %q, reported %q; want %d loads, %d reports", i, s.write, r.loaded, r.reported, s.wantLoaded, s.wantReported)
				}
			}
			for _, msg := range r.reported {
				if !strings.Contains(msg, "bundle.pem") && !strings.Contains(msg, "bad") {
					t.Errorf("report %q names neither the file nor the content's fault", msg)
				}
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	load := func([]byte) error { return nil }
	for name, cfg := range map[string]filewatch.Config{
		"no path":     {MaxSize: 1, Interval: time.Second, Load: load},
		"no size":     {Path: "f", Interval: time.Second, Load: load},
		"no interval": {Path: "f", MaxSize: 1, Load: load},
		"no load":     {Path: "f", MaxSize: 1, Interval: time.Second},
	} {
		if _, err := filewatch.New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// TestWatcherSet watches a set of two files through Read, seeded with
// what the user loaded before the first Check.
func TestWatcherSet(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write := func(path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	readSet := func() ([]byte, error) {
		x, err := os.ReadFile(a)
		if err != nil {
			return nil, err
		}
		y, err := os.ReadFile(b)
		if err != nil {
			return nil, err
		}
		return append(append(x, 0), y...), nil
	}
	write(a, "1")
	write(b, "1")
	r := &recorder{}
	w, err := filewatch.New(filewatch.Config{Path: dir, MaxSize: 64, Interval: time.Hour, Read: readSet, Load: r.load, Report: r.report})
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := readSet()
	w.Seed(seed)
	steps := []struct {
		name                     string
		change                   func()
		wantLoaded, wantReported int
	}{
		{name: "seeded content is not loaded again", change: func() {}},
		{name: "a change to either file loads the set", change: func() { write(b, "2") }, wantLoaded: 1},
		{name: "a missing file is reported once", change: func() { os.Remove(a) }, wantLoaded: 1, wantReported: 1},
		{name: "and not twice", change: func() {}, wantLoaded: 1, wantReported: 1},
		{name: "invalid content is reported", change: func() { write(a, "bad") }, wantLoaded: 1, wantReported: 2},
		{name: "the set back to valid loads", change: func() { write(a, "3") }, wantLoaded: 2, wantReported: 2},
	}
	for _, st := range steps {
		st.change()
		w.Check()
		if len(r.loaded) != st.wantLoaded || len(r.reported) != st.wantReported {
			t.Fatalf("%s: loaded %q, reported %q; want %d loads, %d reports", st.name, r.loaded, r.reported, st.wantLoaded, st.wantReported)
		}
	}
}
