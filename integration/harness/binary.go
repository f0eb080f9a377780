package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// binPrefix begins the name of the directory a test process builds its
// commands in; the process id follows it.
const binPrefix = "castellan-bin-"

// sweep removes, once per test process, the command directories left by
// test processes that have exited: each run builds its own, and a machine
// that runs the suite often would otherwise fill its disk with them.
var sweep sync.Once

// sweepBinaries removes the command directories under os.TempDir whose
// test process is gone.
func sweepBinaries() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binPrefix+"*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(dir), binPrefix), "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// builds holds the commands built by this test process, keyed by name and
// build flags, so that each is built once however many tests run it.
var builds struct {
	mu   sync.Mutex
	byID map[string]*build
}

// build is one command built, or being built, by Binary.
type build struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of the command ./cmd/<name> of the main module
// (the repository root, outside the integration module), built with
// "go build" and the build flags flags (for example "-tags", "grpcnotrace").
// The command is built once per test process for each name and set of
// flags; later calls return the same file. A failed build fails the test
// with the go command's output, and fails later calls the same way.
//
// The binary is left in a directory under os.TempDir, since it outlives
// the test that built it; the next test process to build one removes the
// directories of processes that have exited.
func Binary(t testing.TB, name string, flags ...string) string {
	t.Helper()
	id := strings.Join(append([]string{name}, flags...), "\x00")
	builds.mu.Lock()
	if builds.byID == nil {
		builds.byID = map[string]*build{}
	}
	b := builds.byID[id]
	if b == nil {
		b = &build{}
		builds.byID[id] = b
	}
	builds.mu.Unlock()

	b.once.Do(func() { b.path, b.err = buildCommand(name, flags) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// buildCommand builds ./cmd/<name> of the main module into a new temporary
// directory and returns the binary's path.
func buildCommand(name string, flags []string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("harness: cannot locate the harness source to find the repository")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	sweep.Do(sweepBinaries)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", binPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("harness: building ./cmd/%s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	args := append([]string{"build", "-C", root}, flags...)
	args = append(args, "-o", path, "./cmd/"+name)
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	return path, nil
}
