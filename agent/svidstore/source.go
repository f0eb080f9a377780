package svidstore

import "context"

// Source is what the agent's endpoints serve, the SDS server and the
// Workload API server alike: the current Snapshot, and a channel closed
// when it changes. *Store implements it.
type Source interface {
	Load() (Snapshot, <-chan struct{})
}

// Resolver returns the Source that serves the caller of a call, from the
// call's context: in a node agent, the one of the caller's own workload.
// An endpoint ends the call with the error it returns as it is, so it
// should be a gRPC status that says why (PermissionDenied for a caller
// that is not entitled to anything).
type Resolver func(ctx context.Context) (Source, error)

var _ Source = (*Store)(nil)
