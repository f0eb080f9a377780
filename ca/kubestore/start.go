package kubestore

import (
	"context"
	"errors"
	"time"
)

// waitLogInterval is how often Start says why the Secret is not loaded
// yet.
const waitLogInterval = 10 * time.Second

// Start runs the Store (see Run) in the background and returns once the
// Secret's material is loaded (created by the leader on first install),
// so that a server starts with it, saying every few seconds why it is not
// there yet. The Store runs until ctx ends; run waits for it to stop
// (stopping it when run's own context ends) and returns its error. If
// ctx ends or the Store stops before the first load, Start stops the
// Store and returns the reason.
func (s *Store) Start(ctx context.Context) (run func(context.Context) error, err error) {
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.Run(runCtx) }()
	if err := s.waitLoaded(ctx, errc); err != nil {
		cancel() // Run, if still running, stops and its result is dropped
		return nil, err
	}
	return func(rctx context.Context) error {
		defer cancel()
		select {
		case err := <-errc:
			return err
		case <-rctx.Done():
			cancel()
			return <-errc
		}
	}, nil
}

// waitLoaded waits for the Secret's first load, or for Run to stop.
func (s *Store) waitLoaded(ctx context.Context, errc <-chan error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tick := time.NewTicker(waitLogInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.Loaded():
			return nil
		case err := <-errc:
			if err == nil {
				err = errors.New("kubestore: stopped before loading the CA Secret")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			_, why := s.Ready()
			s.log.Info("waiting for the CA material", "reason", why)
		}
	}
}
