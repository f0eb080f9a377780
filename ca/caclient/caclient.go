// Package caclient calls a CA that speaks Istio's certificate service
// (istio.v1.auth.IstioCertificateService), such as Castellan's, over TLS.
package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// Config configures a Client.
type Config struct {
	// Addr is the CA's host:port.
	Addr string
	// Roots verify the CA's serving certificate. Required.
	Roots *x509.CertPool
	// ServerName is the name checked in the serving certificate. Default:
	// the host of Addr.
	ServerName string
	// DialOptions are appended to the gRPC dial options.
	DialOptions []grpc.DialOption
}

// Client requests certificates from a CA. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	svc  pb.IstioCertificateServiceClient
}

// New returns a Client for cfg. The connection is made lazily.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("caclient: no CA address")
	}
	if cfg.Roots == nil {
		return nil, errors.New("caclient: no roots to verify the CA with")
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: cfg.Roots, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12})
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("caclient: %w", err)
	}
	return &Client{conn: conn, svc: pb.NewIstioCertificateServiceClient(conn)}, nil
}

// CreateCertificateRequest sends req as is, with the bearer token, and
// returns the PEM chain, leaf first.
func (c *Client) CreateCertificateRequest(ctx context.Context, token string, req *pb.IstioCertificateRequest) ([]string, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := c.svc.CreateCertificate(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, errors.New("caclient: CA returned an empty chain")
	}
	return resp.GetCertChain(), nil
}

// Conn returns the underlying gRPC connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// CreateCertificate sends csrPEM with the bearer token and returns the PEM
// chain, leaf first. A zero ttl asks for the CA's default.
func (c *Client) CreateCertificate(ctx context.Context, token string, csrPEM []byte, ttl time.Duration) ([]string, error) {
	return c.CreateCertificateRequest(ctx, token, &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl / time.Second),
	})
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
