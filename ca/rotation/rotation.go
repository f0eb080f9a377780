// Package rotation is the one model of a CA root rotation, shared by every
// place the CA keeps its material (a data directory, a Vault PKI issuer,
// a Kubernetes Secret): the phases, the state that records them, the
// policy that times them, the status that reports them and the metrics
// that export it. Its engine (EngineOf) takes the steps for any Kind of
// authority: X.509 roots (Engine), and the JWT signing keys of package
// jwtsvid, which rotate in the same phases.
//
// A rotation has three steps, each safe only after the previous one has
// had its effect everywhere:
//
//  1. prepare: a new root joins the trust bundle; the old root still
//     signs.
//  2. activate, once the bundle has reached every peer (the propagation
//     delay): the new root signs; the old one stays trusted.
//  3. retire, once no SVID signed under the old root can be valid (the
//     longest SVID lifetime plus a margin for clock skew): the bundle
//     holds only the new root.
package rotation

import (
	"context"
	"log/slog"
	"time"
)

// Phase is where a root rotation stands.
type Phase string

// The phases of a rotation, in order. After retire the phase is steady.
const (
	// PhaseSteady: one root, nothing in progress.
	PhaseSteady Phase = "steady"
	// PhasePrepared: a new root is in the bundle; the old one still signs.
	PhasePrepared Phase = "prepared"
	// PhaseActivated: the new root signs; the old one stays in the bundle
	// until no SVID it signed can still be valid.
	PhaseActivated Phase = "activated"
)

// Phases lists the phases in order.
var Phases = []Phase{PhaseSteady, PhasePrepared, PhaseActivated}

// RootState is the role of one root in the trust bundle.
type RootState string

// The roles a root in the bundle can have.
const (
	RootActive   RootState = "active"
	RootPrepared RootState = "prepared"
	RootRetiring RootState = "retiring"
)

// Mode names where a CA's signing material comes from.
type Mode string

// The CA modes.
const (
	// ModeSelfSigned is a self-signed root in a data directory.
	ModeSelfSigned Mode = "self-signed"
	// ModePluggedIn is Istio's cacerts layout in a data directory.
	ModePluggedIn Mode = "plugged-in"
	// ModeUpstream is an intermediate signed by an upstream CA (Vault).
	ModeUpstream Mode = "upstream"
	// ModeKubernetes is material in a Kubernetes Secret shared by
	// replicas.
	ModeKubernetes Mode = "kubernetes"
)

// Rotator rotates the root of one CA mode, step by step; each step
// refuses when the rotation is in another phase, or when it is not safe
// yet unless force is set.
type Rotator interface {
	// Prepare adds a new root to the trust bundle. from names where the
	// new root comes from, for the modes that take one (a cacerts
	// directory, an upstream issuer).
	Prepare(ctx context.Context, from string) error
	// Activate makes the prepared root sign.
	Activate(ctx context.Context, force bool) error
	// Retire drops the old root from the trust bundle.
	Retire(ctx context.Context, force bool) error
	// Status reports the roots in the bundle and the phase.
	Status(ctx context.Context) (*Status, error)
}

// StepFunc takes the next automatic rotation step if one is due and says
// which ("prepare", "activate", "retire", or "" for none).
type StepFunc func(ctx context.Context) (string, error)

// Run calls step now and every interval until ctx ends. A failed step is
// retried at the next tick; it is logged as an error when it first fails
// (or fails differently), and at debug level while it keeps failing the
// same way. observe, if set, sees every step taken and every failure
// (step "error").
func Run(ctx context.Context, interval time.Duration, step StepFunc, log *slog.Logger, observe func(step string)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		did, err := step(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			level := slog.LevelError
			if err.Error() == lastErr {
				level = slog.LevelDebug
			}
			lastErr = err.Error()
			log.Log(ctx, level, "automatic root rotation step failed; will retry", "error", err)
			did = "error"
		case did != "":
			lastErr = ""
			log.Info("automatic root rotation", "step", did)
		default:
			lastErr = ""
		}
		if observe != nil && did != "" {
			observe(did)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
