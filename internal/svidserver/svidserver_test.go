package svidserver_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/svidserver"
)

type own struct{ n int }

func TestConfigure(t *testing.T) {
	store := svidstore.New()
	resolve, err := svidserver.Fixed("test", store)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	tests := []struct {
		name    string
		resolve svidstore.Resolver
		opts    []svidserver.Option[own]
		check   func(t *testing.T, c svidserver.Config[own])
		wantErr string
	}{
		{name: "defaults", resolve: resolve, check: func(t *testing.T, c svidserver.Config[own]) {
			if c.Logger == nil || c.Registerer != nil || c.Own != (own{}) {
				t.Errorf("defaults: logger %v, registerer %v, own %+v; want a logger, no registerer, zero own", c.Logger, c.Registerer, c.Own)
			}
		}},
		{name: "options", resolve: resolve, opts: []svidserver.Option[own]{
			svidserver.WithLogger[own](log), svidserver.WithRegisterer[own](reg),
			svidserver.WithOwn(func(o *own) { o.n = 1 }), svidserver.WithOwn(func(o *own) { o.n++ }),
		}, check: func(t *testing.T, c svidserver.Config[own]) {
			if c.Logger != log || c.Registerer != reg || c.Own.n != 2 {
				t.Errorf("got logger %v, registerer %v, own %+v; want the ones set, own.n 2 (options in order)", c.Logger, c.Registerer, c.Own)
			}
		}},
		{name: "nil resolver", wantErr: "test: nil resolver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := svidserver.Configure("test", tt.resolve, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Configure: err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			src, err := c.Resolve(context.Background())
			if err != nil || src != store {
				t.Fatalf("Resolve = %v, %v; want the fixed source", src, err)
			}
			tt.check(t, c)
		})
	}
}

func TestFixedNil(t *testing.T) {
	if _, err := svidserver.Fixed("sds", nil); err == nil || err.Error() != "sds: nil source" {
		t.Fatalf("Fixed(nil): err = %v, want \"sds: nil source\"", err)
	}
}
