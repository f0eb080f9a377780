package kubestore

import (
	"context"
	"errors"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

// TestStart: Start returns once the leader has created and loaded the
// Secret, and run stops the Store when its context ends; a Start whose
// context ends first returns that reason.
func TestStart(t *testing.T) {
	s, err := New(fastConfig(fake.NewClientset(), "a"))
	if err != nil {
		t.Fatal(err)
	}
	run, err := s.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Authority() == nil {
		t.Fatal("Start returned before the material was loaded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := run(ctx); err != nil {
		t.Fatalf("run after its context ended: %v", err)
	}

	// A Start whose context has ended does not wait for the material.
	s2, err := New(fastConfig(fake.NewClientset(), "b"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with an ended context = %v, want context.Canceled", err)
	}
}
