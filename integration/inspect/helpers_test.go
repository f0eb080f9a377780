package inspect_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// castellanBinary builds the castellan command once per test binary, from
// the main module, and returns its path.
func castellanBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := filepath.Abs("../..")
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "castellan-inspect-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "castellan")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/castellan")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = errors.New(err.Error() + ": " + string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("building castellan: %v", buildErr)
	}
	return binPath
}

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
	cmd := exec.CommandContext(ctx, castellanBinary(t), args...)
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

// serveTLS runs a TLS server on 127.0.0.1:0 that completes handshakes and
// then holds the connection until the client hangs up. It stops when the
// test ends.
func serveTLS(t *testing.T, conf *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
