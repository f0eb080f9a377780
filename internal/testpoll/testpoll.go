// Package testpoll waits, in tests, for something that happens in the
// background: a watch that catches up, a metric that is counted, a push
// that reaches a client. It polls with a generous deadline and fails the
// test when the deadline passes, so that a slow machine makes a test slow,
// never flaky; how fast it happened is for benchmarks, not for tests.
package testpoll

import (
	"testing"
	"time"
)

// Timeout is how long Until and UntilNil wait before they fail the test.
// It is long on purpose: it bounds a wait that should end in milliseconds
// and only fires when the awaited event never comes.
const Timeout = 30 * time.Second

// interval is the pause between two checks.
const interval = 10 * time.Millisecond

// Until calls cond until it returns true. When Timeout passes first, it
// fails the test with "timed out waiting for <what>".
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	UntilNil(t, func() error {
		if cond() {
			return nil
		}
		return errWaiting(what)
	})
}

// UntilNil calls check until it returns nil. When Timeout passes first, it
// fails the test with the last error check returned, which should say what
// was seen and what was wanted.
func UntilNil(t testing.TB, check func() error) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", Timeout, err)
		}
		time.Sleep(interval)
	}
}

// errWaiting is the error of a condition of Until that has not come true.
type errWaiting string

func (e errWaiting) Error() string { return "timed out waiting for " + string(e) }
