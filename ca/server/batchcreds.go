package server

import (
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/castellan-mesh/castellan/internal/writebatch"
)

// batchingCreds are TLS server credentials whose connections gather the
// writes of concurrent responses into fewer records and system calls
// (internal/writebatch).
type batchingCreds struct {
	credentials.TransportCredentials
}

// ServerHandshake completes the TLS handshake and wraps the connection.
func (c batchingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return writebatch.New(conn), info, nil
}

// Clone returns a copy of c.
func (c batchingCreds) Clone() credentials.TransportCredentials {
	return batchingCreds{c.TransportCredentials.Clone()}
}
