package server

import (
	"context"
	"time"
)

// The Server checks its Source and its Rotation for these optional
// interfaces.

// Readier is a Source that can tell whether it may sign: a Kubernetes
// Secret not loaded yet or deleted, an upstream renewal failing while the
// current chain still signs. /readyz reports it.
type Readier interface {
	// Ready reports whether the Source may sign, and why not.
	Ready() (ok bool, why string)
}

// Stepper is a Rotation that takes by itself the automatic step due now,
// as rotation.Engine does.
type Stepper interface {
	// Step takes the step due now, if any, for a root rotated when it
	// has less than rotateBefore left, and says which ("" for none).
	Step(ctx context.Context, rotateBefore time.Duration) (step string, err error)
}
