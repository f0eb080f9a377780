// Package svidserver holds what the node agent's two endpoints, the SDS
// server (package sds) and the Workload API server (package
// agent/workloadapi), share in how they are configured and built: their
// options (a logger, a metrics registerer, and each server's own
// settings) and the Resolver of each call's Source, one for every caller
// or one per caller.
package svidserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/agent/svidstore"
)

// Config is a server's configuration: the settings both servers have, and
// X, the server's own (struct{} for a server with none).
type Config[X any] struct {
	// Resolve picks the Source that serves a call.
	Resolve svidstore.Resolver
	// Logger receives the server's logs. Default: discarded.
	Logger *slog.Logger
	// Registerer receives the server's metrics. Default: nil, the metrics
	// are counted but registered nowhere.
	Registerer prometheus.Registerer
	// Own holds the server's own settings.
	Own X
}

// Option configures a server whose own settings are X. Only this package
// and WithOwn make Options.
type Option[X any] interface{ apply(*Config[X]) }

type optionFunc[X any] func(*Config[X])

func (f optionFunc[X]) apply(c *Config[X]) { f(c) }

// WithLogger sets the logger.
func WithLogger[X any](l *slog.Logger) Option[X] {
	return optionFunc[X](func(c *Config[X]) { c.Logger = l })
}

// WithRegisterer registers the server's metrics on r.
func WithRegisterer[X any](r prometheus.Registerer) Option[X] {
	return optionFunc[X](func(c *Config[X]) { c.Registerer = r })
}

// WithOwn returns an Option that sets part of the server's own settings.
func WithOwn[X any](set func(*X)) Option[X] {
	return optionFunc[X](func(c *Config[X]) { set(&c.Own) })
}

// Fixed returns a Resolver that serves source to every caller. A nil
// source is an error, prefixed with the server's name.
func Fixed(name string, source svidstore.Source) (svidstore.Resolver, error) {
	if source == nil {
		return nil, fmt.Errorf("%s: nil source", name)
	}
	return func(context.Context) (svidstore.Source, error) { return source, nil }, nil
}

// Configure returns the configuration of the server called name (the
// prefix of its errors) that serves each call from the Source resolve
// returns for it, with opts applied over the defaults. A nil resolve is an
// error.
func Configure[X any](name string, resolve svidstore.Resolver, opts []Option[X]) (Config[X], error) {
	if resolve == nil {
		return Config[X]{}, errors.New(name + ": nil resolver")
	}
	c := Config[X]{Resolve: resolve, Logger: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o.apply(&c)
	}
	return c, nil
}
