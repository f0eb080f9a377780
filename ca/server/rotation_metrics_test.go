package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestRotationCollectorError: when the rotation state cannot be read, the
// collector counts the error and still exports the roots the CA serves,
// instead of exporting nothing.
func TestRotationCollectorError(t *testing.T) {
	store, err := material.Open(context.Background(), material.Config{
		Dir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	fail := true
	reg := prometheus.NewPedanticRegistry()
	err = (&metrics{}).registerRotation(reg, func(context.Context) (*rotation.Status, error) {
		if fail {
			return nil, errors.New("rotation.json: unreadable")
		}
		return &rotation.Status{Phase: rotation.PhaseSteady}, nil
	}, store)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP castellan_ca_bundle_roots Roots in the trust bundle.
# TYPE castellan_ca_bundle_roots gauge
castellan_ca_bundle_roots 1
# HELP castellan_ca_rotation_status_errors_total Scrapes at which the root rotation state could not be read; the roots the CA serves are exported with state unknown.
# TYPE castellan_ca_rotation_status_errors_total counter
castellan_ca_rotation_status_errors_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "castellan_ca_bundle_roots", "castellan_ca_rotation_status_errors_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "castellan_ca_bundle_root_expiry_timestamp_seconds"); err != nil || n != 1 {
		t.Fatalf("root expiry series: %d, %v", n, err)
	}
	fail = false
	if n, err := testutil.GatherAndCount(reg, "castellan_ca_rotation_phase"); err != nil || n != 3 {
		t.Fatalf("phase series once the state reads: %d, %v", n, err)
	}
}
