package testpoll

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

func TestUntilReturnsOnceTrue(t *testing.T) {
	var n atomic.Int32
	Until(t, "the third call", func() bool { return n.Add(1) == 3 })
	if got := n.Load(); got != 3 {
		t.Fatalf("cond called %d times, want 3", got)
	}
}

func TestUntilNilReturnsOnceNil(t *testing.T) {
	var n atomic.Int32
	UntilNil(t, func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := n.Load(); got != 3 {
		t.Fatalf("check called %d times, want 3", got)
	}
}

func TestWaitingMessage(t *testing.T) {
	if got := errWaiting("the bundle").Error(); !strings.Contains(got, "timed out waiting for the bundle") {
		t.Fatalf("message %q does not name what was awaited", got)
	}
}
