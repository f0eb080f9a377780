package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// ProcCounts are counters of a process that tell where its system time
// goes, and which a loaded machine does not inflate as it does CPU time:
// the read and write system calls it made (syscr and syscw of
// /proc/<pid>/io) and the context switches of its threads
// (/proc/<pid>/task/*/status; a thread that exits takes its count with it,
// which a Go process rarely does).
type ProcCounts struct {
	ReadCalls, WriteCalls                  int64
	VoluntarySwitches, InvoluntarySwitches int64
}

// Sub returns c minus o, counter by counter.
func (c ProcCounts) Sub(o ProcCounts) ProcCounts {
	return ProcCounts{
		ReadCalls:           c.ReadCalls - o.ReadCalls,
		WriteCalls:          c.WriteCalls - o.WriteCalls,
		VoluntarySwitches:   c.VoluntarySwitches - o.VoluntarySwitches,
		InvoluntarySwitches: c.InvoluntarySwitches - o.InvoluntarySwitches,
	}
}

// maxProcFile bounds what is read of one /proc file.
const maxProcFile = 64 << 10

// ReadProcCounts reads the counters of process pid.
func ReadProcCounts(pid int) (ProcCounts, error) {
	var c ProcCounts
	dir := fmt.Sprintf("/proc/%d", pid)
	err := scanProcFile(filepath.Join(dir, "io"), map[string]*int64{"syscr:": &c.ReadCalls, "syscw:": &c.WriteCalls})
	if err != nil {
		return ProcCounts{}, err
	}
	err = eachThread(pid, "status", func(path string) error {
		var vol, invol int64
		if err := scanProcFile(path, map[string]*int64{"voluntary_ctxt_switches:": &vol, "nonvoluntary_ctxt_switches:": &invol}); err != nil {
			return err
		}
		c.VoluntarySwitches += vol
		c.InvoluntarySwitches += invol
		return nil
	})
	if err != nil {
		return ProcCounts{}, err
	}
	return c, nil
}

// scanProcFile reads the "key: value" lines of a /proc file into the
// counters of fields, each of which must be found.
func scanProcFile(path string, fields map[string]*int64) error {
	b, err := smallfile.Read(path, maxProcFile)
	if err != nil {
		return fmt.Errorf("loadgen: %w", err)
	}
	found := 0
	for line := range bytes.Lines(b) {
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		dst, want := fields[string(key)+":"]
		if !want {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(val)), 10, 64)
		if err != nil {
			return fmt.Errorf("loadgen: %s: field %s: %w", path, key, err)
		}
		*dst = n
		found++
	}
	if found != len(fields) {
		return fmt.Errorf("loadgen: %s: %d of the %d expected fields", path, found, len(fields))
	}
	return nil
}

// ReadRuntime returns the CPU time of process pid to the nanosecond: the
// sum over its threads of the time on a CPU that the scheduler counts
// (the first field of /proc/<pid>/task/*/schedstat). /proc/<pid>/stat
// counts in clock ticks, too coarse for a slice of a run. A thread that
// exits takes its time with it, which a Go process rarely does.
func ReadRuntime(pid int) (time.Duration, error) {
	var total time.Duration
	err := eachThread(pid, "schedstat", func(path string) error {
		rt, err := readSchedRuntime(path)
		total += rt
		return err
	})
	return total, err
}

// readSchedRuntime reads a thread's time on a CPU from its schedstat file.
func readSchedRuntime(path string) (time.Duration, error) {
	b, err := smallfile.Read(path, maxProcFile)
	if err != nil {
		return 0, fmt.Errorf("loadgen: %w", err)
	}
	first, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte(" "))
	ns, err := strconv.ParseInt(string(first), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("loadgen: %s: %w", path, err)
	}
	return time.Duration(ns), nil
}

// eachThread calls read with the path of the file named name of each
// thread of process pid (/proc/<pid>/task/<tid>/<name>). A thread that
// exits after the listing is skipped: read's error wrapping
// fs.ErrNotExist.
func eachThread(pid int, name string, read func(path string) error) error {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("loadgen: threads of process %d: %w", pid, err)
	}
	for _, t := range tasks {
		if err := read(filepath.Join(dir, t.Name(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// machineTime returns the CPU time all of this machine's CPUs have had,
// busy or idle: the sum of the counters of /proc/stat's cpu line.
func machineTime() (time.Duration, error) {
	b, err := smallfile.Read("/proc/stat", maxProcFile)
	if err != nil {
		return 0, fmt.Errorf("loadgen: %w", err)
	}
	return parseMachineTime(b)
}

// parseMachineTime parses the first line of /proc/stat: "cpu" and at least
// the eight counters user, nice, system, idle, iowait, irq, softirq and
// steal, in clock ticks. Guest time, which may follow, is already in user
// and nice.
func parseMachineTime(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("loadgen: /proc/stat: first line %q is not cpu and eight counters", clip.String(string(line), 80))
	}
	var ticks int64
	for i, c := range f[1:9] {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("loadgen: /proc/stat: counter %d of the cpu line is %q, not a count of ticks", i+1, clip.String(c, 24))
		}
		ticks += n
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / hz, nil
}

// threadTimes are the times threads have spent on a CPU, by the path of
// their /proc/<pid>/task/<tid> directory.
type threadTimes map[string]time.Duration

// readOthers reads the time every thread of every process of this machine
// but those of exclude has spent on a CPU, to the nanosecond
// (/proc/<pid>/task/<tid>/schedstat), kernel threads included. A process
// or thread that ends while it is read is left out.
func readOthers(exclude ...int) (threadTimes, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("loadgen: listing processes: %w", err)
	}
	times := threadTimes{}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || slices.Contains(exclude, pid) {
			continue
		}
		err = eachThread(pid, "schedstat", func(path string) error {
			rt, err := readSchedRuntime(path)
			if err == nil {
				times[filepath.Dir(path)] = rt
			}
			return err
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return times, nil
}

// since returns the time the threads of t have spent on a CPU since
// before: each thread's gain, or its whole time if it is new. A thread
// that ended in between is missed, with what it spent meanwhile.
func (t threadTimes) since(before threadTimes) time.Duration {
	var sum time.Duration
	for path, rt := range t {
		sum += max(0, rt-before[path])
	}
	return sum
}
