package harness

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Child is the test binary run again as a child process, such as a
// workload that the test puts in a pod's cgroups before it connects
// anywhere. It reads its instructions on stdin and answers on stdout, a
// line each; its stderr is the test's.
type Child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	stop  sync.Once
}

// StartChild runs the test binary with -test.run=run and env added to the
// test's environment. The child is stopped when the test ends.
func StartChild(t testing.TB, run string, env ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run="+run)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a child process: %v", err)
	}
	c := &Child{cmd: cmd, stdin: stdin, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(c.Stop)
	return c
}

// Pid returns the child's process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Send writes line to the child's stdin.
func (c *Child) Send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(c.stdin, line); err != nil {
		t.Fatalf("writing to child %d: %v", c.Pid(), err)
	}
}

// Next returns the child's next line of output. It fails the test when
// the child exits first, or prints nothing within timeout.
func (c *Child) Next(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("child %d exited without printing", c.Pid())
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("child %d printed nothing within %s", c.Pid(), timeout)
	}
	return ""
}

// Stop closes the child's stdin, kills it and reaps it, which frees its
// pid. Later calls do nothing.
func (c *Child) Stop() {
	c.stop.Do(func() {
		c.stdin.Close()
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	})
}
