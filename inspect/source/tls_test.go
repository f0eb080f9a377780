package source_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestTLS(t *testing.T) {
	p := testpki.New(t)
	client := testpki.New(t)
	clientPool := x509.NewCertPool()
	clientPool.AddCert(client.Root)
	base := func(version uint16, auth tls.ClientAuthType) *tls.Config {
		return &tls.Config{
			Certificates: []tls.Certificate{p.TLSCertificate()},
			ClientAuth:   auth,
			ClientCAs:    clientPool,
			MinVersion:   version,
			MaxVersion:   version,
		}
	}
	clientPair := tls.Certificate{Certificate: [][]byte{client.Leaf.Raw, client.Intermediate.Raw}, PrivateKey: client.LeafKey}

	tests := []struct {
		name      string
		server    *tls.Config
		cfg       source.TLSConfig
		wantNotes []string
	}{
		{
			name:      "TLS 1.3 without client auth",
			server:    base(tls.VersionTLS13, tls.NoClientCert),
			wantNotes: []string{"negotiated TLS 1.3"},
		},
		{
			name:      "TLS 1.2 without client auth",
			server:    base(tls.VersionTLS12, tls.NoClientCert),
			wantNotes: []string{"negotiated TLS 1.2"},
		},
		{
			name:      "TLS 1.3 mTLS-only port without a client certificate",
			server:    base(tls.VersionTLS13, tls.RequireAndVerifyClientCert),
			wantNotes: []string{"asked for a client certificate and none was given", "the handshake failed after the server presented its certificate"},
		},
		{
			name:      "TLS 1.2 mTLS-only port without a client certificate",
			server:    base(tls.VersionTLS12, tls.RequireAndVerifyClientCert),
			wantNotes: []string{"asked for a client certificate and none was given", "the handshake failed after the server presented its certificate"},
		},
		{
			name:      "mTLS-only port with a client certificate",
			server:    base(tls.VersionTLS13, tls.RequireAndVerifyClientCert),
			cfg:       source.TLSConfig{ClientCertificate: clientPair},
			wantNotes: []string{"negotiated TLS 1.3", "asked for a client certificate and one was presented"},
		},
		{
			name:      "server name",
			server:    base(tls.VersionTLS13, tls.NoClientCert),
			cfg:       source.TLSConfig{ServerName: "web.example.test"},
			wantNotes: []string{"SNI server name web.example.test"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sni string
			tt.server.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sni = h.ServerName
				return nil, nil
			}
			addr := testpki.ServeTLS(t, tt.server)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			in, err := source.TLS(ctx, addr, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if in.Source != "tls:"+addr {
				t.Errorf("source = %q", in.Source)
			}
			if len(in.Chain) != 2 || !in.Chain[0].Equal(p.Leaf) || !in.Chain[1].Equal(p.Intermediate) {
				t.Errorf("chain has %d certificates, want the server's leaf and intermediate", len(in.Chain))
			}
			for _, want := range tt.wantNotes {
				if !slices.ContainsFunc(in.Notes, func(n string) bool { return strings.Contains(n, want) }) {
					t.Errorf("notes %q lack %q", in.Notes, want)
				}
			}
			if sni != tt.cfg.ServerName {
				t.Errorf("server saw SNI %q, want %q", sni, tt.cfg.ServerName)
			}
		})
	}
}

func TestTLSErrors(t *testing.T) {
	// A listener that accepts and hangs up at once: no certificate.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, tt := range []struct{ name, addr, wantErr string }{
		{"no port", "127.0.0.1", "expected host:port"},
		{"nothing listening", closedAddr, "TLS handshake with"},
		{"not TLS", ln.Addr().String(), "TLS handshake with"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := source.TLS(ctx, tt.addr, source.TLSConfig{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	// The context bounds a server that never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := source.TLS(ctx, silent.Addr().String(), source.TLSConfig{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want a deadline error", err)
	}
}
