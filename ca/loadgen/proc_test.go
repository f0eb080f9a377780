package loadgen

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestReadProcCounts makes system calls and context switches of known
// numbers and checks that at least those are counted.
func TestReadProcCounts(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before, err := ReadProcCounts(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	const writes, sleeps = 20, 5
	for range writes {
		if _, err := f.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range sleeps {
		if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
			t.Fatal(err)
		}
	}
	// A thread that sleeps gives up its core: a voluntary switch each time.
	runtime.LockOSThread()
	for range sleeps {
		time.Sleep(time.Millisecond)
	}
	runtime.UnlockOSThread()
	after, err := ReadProcCounts(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	switch {
	case d.WriteCalls < writes:
		t.Errorf("%d write syscalls counted, want at least %d", d.WriteCalls, writes)
	case d.ReadCalls < sleeps:
		t.Errorf("%d read syscalls counted, want at least %d", d.ReadCalls, sleeps)
	case d.VoluntarySwitches < sleeps:
		t.Errorf("%d voluntary context switches counted, want at least %d", d.VoluntarySwitches, sleeps)
	case d.InvoluntarySwitches < 0:
		t.Errorf("involuntary context switches went down by %d", -d.InvoluntarySwitches)
	}
	if _, err := ReadProcCounts(1 << 30); err == nil {
		t.Error("no such process: want an error")
	}
}

func TestScanProcFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"both fields", "rchar: 1\nsyscr: 12\nsyscw:\t34\n", true},
		{"one missing", "syscr: 12\n", false},
		{"not a number", "syscr: 12\nsyscw: x\n", false},
		{"too long", "syscr: 1\nsyscw: 2\n" + string(make([]byte, maxProcFile)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r, w int64
			err := scanProcFile(write("io", tc.text), map[string]*int64{"syscr:": &r, "syscw:": &w})
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (r != 12 || w != 34) {
				t.Fatalf("read %d write %d, want 12 and 34", r, w)
			}
		})
	}
}

func TestReadRuntime(t *testing.T) {
	r0, err := ReadRuntime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Spin on this thread until its own CPU clock has counted 50 ms (by
	// the wall clock it may take longer on a busy machine). The process's
	// runtime includes them; a running thread's schedstat may lag its
	// clock by up to a scheduler tick.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0, err := threadCPU()
	if err != nil {
		t.Fatal(err)
	}
	for x := 0; ; x++ {
		_ = x * x
		if x%1024 != 0 {
			continue
		}
		now, err := threadCPU()
		if err != nil {
			t.Fatal(err)
		}
		if now-t0 >= 50*time.Millisecond {
			break
		}
	}
	r1, err := ReadRuntime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := r1 - r0; d < 35*time.Millisecond {
		t.Errorf("50 ms of one thread's CPU counted as %v of the process's", d)
	}
	if _, err := ReadRuntime(1 << 30); err == nil {
		t.Error("a process that does not exist has a runtime")
	}
}

func TestParseMachineTime(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     time.Duration
		err      string
	}{
		{"kernel 6", "cpu  100 20 30 800 10 5 5 30 7 0\ncpu0 50 10 15 400 5 2 3 15 0 0\n", 10 * time.Second, ""},
		{"eight counters", "cpu 1 0 0 99 0 0 0 0", time.Second, ""},
		{"no cpu line", "intr 1 2 3\n", 0, "is not cpu and eight counters"},
		{"per-CPU first", "cpu0 1 2 3 4 5 6 7 8\n", 0, "is not cpu and eight counters"},
		{"short", "cpu 1 2 3\n", 0, "is not cpu and eight counters"},
		{"not a number", "cpu 1 2 x 4 5 6 7 8\n", 0, `counter 3 of the cpu line is "x"`},
		{"negative", "cpu 1 2 3 -4 5 6 7 8\n", 0, `counter 4 of the cpu line is "-4"`},
		{"long line", "cpu0" + strings.Repeat(" 1", 100), 0, `..." is not cpu`},
		{"empty", "", 0, "is not cpu and eight counters"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMachineTime([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestReadOthers checks that a child process's CPU counts among the
// others, and this process's does not.
func TestReadOthers(t *testing.T) {
	m0, err := machineTime()
	if err != nil {
		t.Fatal(err)
	}
	o0, err := readOthers(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// This process spins 200 ms, and a child spins until it is killed.
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	c0 := processCPU()
	for processCPU()-c0 < 200*time.Millisecond {
	}
	deadline := time.Now().Add(10 * time.Second)
	var child time.Duration
	for time.Now().Before(deadline) {
		if child, err = ReadRuntime(cmd.Process.Pid); err != nil || child >= 100*time.Millisecond {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	o1, err := readOthers(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	m1, err := machineTime()
	if err != nil {
		t.Fatal(err)
	}
	others, machine := o1.since(o0), m1-m0
	if child < 100*time.Millisecond {
		t.Fatalf("the child ran %s", child)
	}
	if others < child {
		t.Errorf("others ran %s, less than the child's %s", others, child)
	}
	if others > machine {
		t.Errorf("others ran %s of the machine's %s", others, machine)
	}
	self := fmt.Sprintf("/proc/%d/", os.Getpid())
	for path := range o1 {
		if strings.HasPrefix(path, self) {
			t.Errorf("this process's thread %s is among the others", path)
		}
	}
	t.Logf("others %s (the child %s) of the machine's %s", others, child, machine)
}

func TestThreadTimesSince(t *testing.T) {
	before := threadTimes{"/proc/1/task/1": time.Second, "/proc/2/task/2": 5 * time.Second, "/proc/3/task/3": time.Hour}
	after := threadTimes{
		"/proc/1/task/1": 3 * time.Second, // gained 2 s
		"/proc/2/task/2": 4 * time.Second, // went back (a reused id): nothing
		"/proc/4/task/4": time.Second,     // new: all of it
		// 3 ended: missed, not subtracted
	}
	if got, want := after.since(before), 3*time.Second; got != want {
		t.Errorf("since = %s, want %s", got, want)
	}
}
