package testrun

import (
	"context"
	"testing"
)

func TestBackgroundCancelsAtCleanup(t *testing.T) {
	ended := make(chan struct{})
	t.Run("inner", func(t *testing.T) {
		ctx := Background(t, "loop", func(ctx context.Context) error {
			<-ctx.Done()
			close(ended)
			return nil
		})
		if ctx.Err() != nil {
			t.Fatal("the context is cancelled before the test ends")
		}
	})
	select {
	case <-ended:
	default:
		t.Fatal("run had not returned when the test's cleanup ended")
	}
}
