// Package testrun runs, in tests, a component's blocking Run loop in the
// background for the rest of the test, and checks how it ends.
package testrun

import (
	"context"
	"testing"
)

// Background calls run in a goroutine with a context that is cancelled
// when the test ends. The test's cleanup cancels it, waits for run to
// return and reports a non-nil error, naming the component by what.
// Background returns run's context, for calls that should end with it.
func Background(t testing.TB, what string, run func(context.Context) error) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", what, err)
		}
	})
	return ctx
}
