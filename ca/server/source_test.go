package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
)

// steppingRotation is a Rotation and a Stepper whose first automatic
// step is a prepare; it records the rotateBefore of each step.
type steppingRotation struct {
	mu     sync.Mutex
	before []time.Duration
}

var errByHand = errors.New("not taken by hand in this test")

func (r *steppingRotation) Prepare(context.Context, string) error { return errByHand }
func (r *steppingRotation) Activate(context.Context, bool) error  { return errByHand }
func (r *steppingRotation) Retire(context.Context, bool) error    { return errByHand }
func (r *steppingRotation) Status(context.Context) (*rotation.Status, error) {
	return &rotation.Status{Phase: rotation.PhaseSteady}, nil
}

func (r *steppingRotation) Step(_ context.Context, before time.Duration) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.before = append(r.before, before)
	if len(r.before) == 1 {
		return rotation.StepPrepare, nil
	}
	return "", nil
}

func (r *steppingRotation) steps() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.before...)
}

// TestAutomaticRotationSteps: the server takes the automatic steps of a
// Rotation that is a Stepper, every RotationInterval with
// RootRotateBefore, and counts each step taken in
// castellan_ca_rotation_steps_total, whatever the CA's mode.
func TestAutomaticRotationSteps(t *testing.T) {
	r := &steppingRotation{}
	s := start(t, func(c *Config) {
		c.Rotation, c.RootRotateBefore, c.RotationInterval = r, 48*time.Hour, 10*time.Millisecond
	})
	deadline := time.Now().Add(10 * time.Second)
	for len(r.steps()) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d automatic steps looked for in 10s, want 3", len(r.steps()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i, before := range r.steps() {
		if before != 48*time.Hour {
			t.Fatalf("step %d: rotateBefore %v, want 48h", i, before)
		}
	}
	families, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string]float64{}
	for _, f := range families {
		if f.GetName() == "castellan_ca_rotation_steps_total" {
			for _, m := range f.GetMetric() {
				steps[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if len(steps) != 1 || steps[rotation.StepPrepare] != 1 {
		t.Fatalf("castellan_ca_rotation_steps_total = %v, want one prepare", steps)
	}
}

// unready is a Source that is a Readier and not ready.
type unready struct{ *material.Store }

func (unready) Ready() (bool, string) {
	return false, "waiting for CA Secret castellan-system/castellan-ca"
}

// TestReadierSource: /readyz reports a Source that is a Readier.
func TestReadierSource(t *testing.T) {
	s := start(t, func(c *Config) { c.Source = unready{dirSource(t)} })
	resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "waiting for CA Secret") {
		t.Fatalf("/readyz = %d %q, want 503 naming the Source's reason", resp.StatusCode, body)
	}
}
