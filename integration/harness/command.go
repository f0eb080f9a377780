package harness

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// RunCastellan runs the castellan command with args and fails t unless it
// exits with code want and its combined output contains contains. It
// returns the output.
func RunCastellan(t testing.TB, want int, contains string, args ...string) string {
	t.Helper()
	out, err := exec.Command(Binary(t, "castellan"), args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("harness: castellan %s: %v", strings.Join(args, " "), err)
	}
	if code != want || !strings.Contains(string(out), contains) {
		t.Fatalf("castellan %s: exit %d, want %d and output containing %q:\n%s", strings.Join(args, " "), code, want, contains, out)
	}
	return string(out)
}
