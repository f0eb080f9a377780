package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

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
// the test that built it.
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
	dir, err := os.MkdirTemp("", "castellan-bin-")
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
