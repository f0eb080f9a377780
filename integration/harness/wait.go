package harness

import (
	"testing"
	"time"
)

// waitInterval is the pause between two checks of WaitFor.
const waitInterval = 50 * time.Millisecond

// WaitFor calls cond until it returns true, and fails the test with
// "timed out after <limit> waiting for <what>" when limit passes first.
// The limit bounds a wait for something the servers do in the background
// (a watch catching up, a rotation, a push); it should be generous, so that
// a loaded machine makes the test slower, never flaky.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(waitInterval)
	}
}

// WaitForNil calls check until it returns nil, and fails the test with the
// last error check returned when limit passes first; that error should say
// what was seen and what was wanted.
func WaitForNil(t testing.TB, limit time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", limit, err)
		}
		time.Sleep(waitInterval)
	}
}
