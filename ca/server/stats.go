package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// oversizeCounter counts requests gRPC refused for exceeding
// MaxRequestBytes; they never reach the handler.
type oversizeCounter struct{ m *metrics }

func (o *oversizeCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (o *oversizeCounter) HandleRPC(_ context.Context, st stats.RPCStats) {
	end, ok := st.(*stats.End)
	if !ok || end.Error == nil || end.Client {
		return
	}
	if status.Code(end.Error) == codes.ResourceExhausted {
		o.m.received.Inc()
		o.m.rejected.WithLabelValues(string(reasonOversized)).Inc()
	}
}
func (o *oversizeCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (o *oversizeCounter) HandleConn(context.Context, stats.ConnStats) {}
