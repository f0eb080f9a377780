package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// oversizeRegistrar registers services on a gRPC server so that requests
// gRPC refuses for exceeding MaxRequestBytes are counted: as received, and
// rejected as oversized_request. gRPC refuses them with ResourceExhausted
// from the length prefix, before reading or decoding the message and
// before any interceptor or handler runs; the only place that sees the
// refusal is the method's decode function, which this wraps.
//
// It replaces a stats.Handler, for which gRPC copies every call's
// metadata and builds and dispatches seven events per call.
type oversizeRegistrar struct {
	g *grpc.Server
	m *metrics
}

// RegisterService registers impl under a copy of desc whose methods count
// refused requests. The handlers desc names still do all the work.
func (r *oversizeRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, md := range desc.Methods {
		h := md.Handler
		d.Methods[i] = grpc.MethodDesc{
			MethodName: md.MethodName,
			Handler: func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
				return h(srv, ctx, func(v any) error { return r.count(dec(v)) }, in)
			},
		}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		d.Streams[i] = sd
		d.Streams[i].Handler = func(srv any, ss grpc.ServerStream) error {
			return h(srv, &oversizeStream{ServerStream: ss, r: r})
		}
	}
	r.g.RegisterService(&d, impl)
}

// count counts err if it is gRPC's refusal of an oversized message, and
// returns it unchanged.
func (r *oversizeRegistrar) count(err error) error {
	if err != nil && status.Code(err) == codes.ResourceExhausted {
		r.m.received.Inc()
		r.m.rejected.WithLabelValues(string(reasonOversized)).Inc()
	}
	return err
}

// oversizeStream counts the oversized messages of a streaming call.
type oversizeStream struct {
	grpc.ServerStream
	r *oversizeRegistrar
}

func (s *oversizeStream) RecvMsg(m any) error { return s.r.count(s.ServerStream.RecvMsg(m)) }
