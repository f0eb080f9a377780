package attest

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// DefaultProcRoot is where the host's /proc is read unless told otherwise.
const DefaultProcRoot = "/proc"

// Size limits of the /proc files read. /proc/<pid>/stat is a single line
// of numbers and a command name of at most 64 bytes; /proc/<pid>/cgroup
// is one line per hierarchy, each path at most PATH_MAX.
const (
	maxStatSize   = 4 << 10
	maxCgroupSize = 64 << 10
)

// procPath returns root/<pid>/name.
func procPath(root string, pid int32, name string) string {
	return filepath.Join(root, strconv.FormatInt(int64(pid), 10), name)
}

// StartTime returns the start time of process pid, in clock ticks since
// boot (field 22 of <procRoot>/<pid>/stat). Together, pid and start time
// name one process: a pid reused by a later process has another start time.
func StartTime(procRoot string, pid int32) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("attest: invalid pid %d", pid)
	}
	data, err := smallfile.Read(procPath(procRoot, pid, "stat"), maxStatSize)
	if err != nil {
		return 0, fmt.Errorf("attest: could not read the start time of process %d: %w", pid, err)
	}
	st, err := parseStartTime(data)
	if err != nil {
		return 0, fmt.Errorf("attest: could not read the start time of process %d: %w", pid, err)
	}
	return st, nil
}

// parseStartTime returns field 22 of a /proc/<pid>/stat line. The second
// field, the command name in parentheses, may itself hold spaces and
// parentheses; it ends at the last ')' of the line, since no later field
// can hold one.
func parseStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 || bytes.IndexByte(stat, '(') < 0 || bytes.IndexByte(stat, '(') > end {
		return 0, errors.New("malformed stat: no command name")
	}
	// Fields after the command name start at field 3 (state); start time
	// is field 22.
	const want = 22 - 3
	rest := stat[end+1:]
	for i := 0; ; i++ {
		rest = bytes.TrimLeft(rest, " ")
		if len(rest) == 0 {
			return 0, fmt.Errorf("malformed stat: %d fields after the command name, want more than %d", i, want)
		}
		n := bytes.IndexAny(rest, " \n")
		if n < 0 {
			n = len(rest)
		}
		if i == want {
			v, err := strconv.ParseUint(string(rest[:n]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("malformed stat: start time: %w", err)
			}
			return v, nil
		}
		rest = rest[n:]
		if len(rest) > 0 && rest[0] == '\n' {
			return 0, fmt.Errorf("malformed stat: %d fields after the command name, want more than %d", i+1, want)
		}
	}
}
