package inspect_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// cliResult is one run of the castellan command.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs castellan with args and the extra environment env, bounded
// by a minute, and returns its exit code and output.
func runCLI(t *testing.T, env []string, stdin []byte, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t, "castellan"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running castellan: %v", err)
	}
	if strings.Contains(stderr.String(), "panic:") || strings.Contains(stderr.String(), "goroutine ") {
		t.Fatalf("castellan panicked:\n%s", stderr.String())
	}
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}
