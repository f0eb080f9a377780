package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
)

// TLSConfig configures TLS. The zero value probes without a client
// certificate, with the host part of the address as server name.
type TLSConfig struct {
	// ServerName is sent as SNI; empty means the host part of the address
	// (no SNI for an IP address).
	ServerName string
	// ClientCertificate, when it holds a certificate, is presented if the
	// server asks for one, so that mTLS-only ports can be probed.
	ClientCertificate tls.Certificate
	// ReadWait is how long to wait after the handshake for the server to
	// reject the client certificate (TLS 1.3 servers do so after the
	// handshake completes on the client side); zero means 250ms, negative
	// means not to wait. It only affects the notes.
	ReadWait time.Duration
}

// TLS connects to addr (host:port) and returns the certificate chain the
// server presents. The chain is captured before any verification, so it is
// returned even when the server then rejects the client (for instance, no
// client certificate on an mTLS-only port); the notes say what happened.
// ctx bounds the dial and the handshake.
func TLS(ctx context.Context, addr string, cfg TLSConfig) (inspect.Input, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: TLS address %q: expected host:port: %w", addr, err)
	}
	serverName := cfg.ServerName
	if serverName == "" && net.ParseIP(host) == nil {
		serverName = host
	}

	var (
		presented [][]byte
		requested bool
	)
	conf := &tls.Config{
		ServerName: serverName,
		// The chain is verified by package inspect against the bundle the
		// user chose, not against the system roots.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			presented = append([][]byte(nil), raw...)
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			requested = true
			return &cfg.ClientCertificate, nil
		},
	}
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: conf}
	conn, hsErr := d.DialContext(ctx, "tcp", addr)
	in := inspect.Input{Source: "tls:" + addr}
	if serverName != "" {
		in.Notes = append(in.Notes, "SNI server name "+serverName)
	}
	if hsErr == nil {
		tc := conn.(*tls.Conn)
		st := tc.ConnectionState()
		note := fmt.Sprintf("negotiated %s with %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
		if st.NegotiatedProtocol != "" {
			note += ", ALPN " + st.NegotiatedProtocol
		}
		in.Notes = append(in.Notes, note)
		if requested {
			hsErr = awaitRejection(tc, cfg.ReadWait)
		}
		tc.Close()
	}
	if len(presented) == 0 {
		if hsErr == nil {
			hsErr = errors.New("the server presented no certificate")
		}
		return inspect.Input{}, fmt.Errorf("source: TLS handshake with %s: %w", addr, hsErr)
	}
	switch {
	case requested && len(cfg.ClientCertificate.Certificate) == 0:
		in.Notes = append(in.Notes, "the server asked for a client certificate and none was given (use --client-cert and --client-key)")
	case requested:
		in.Notes = append(in.Notes, "the server asked for a client certificate and one was presented")
	}
	if hsErr != nil {
		in.Notes = append(in.Notes, "the handshake failed after the server presented its certificate: "+hsErr.Error())
	}
	for i, raw := range presented {
		cert, err := x509.ParseCertificate(raw)
		if err != nil {
			return inspect.Input{}, fmt.Errorf("source: TLS certificate %d from %s: %w", i, addr, err)
		}
		in.Chain = append(in.Chain, cert)
	}
	return in, nil
}

// awaitRejection waits briefly for the alert a TLS 1.3 server sends when it
// rejects the client certificate after the client finished its handshake.
// It returns that alert, or nil when none arrived in time.
func awaitRejection(conn *tls.Conn, wait time.Duration) error {
	if wait < 0 || conn.ConnectionState().Version < tls.VersionTLS13 {
		return nil
	}
	if wait == 0 {
		wait = 250 * time.Millisecond
	}
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil
	}
	var buf [1]byte
	_, err := conn.Read(buf[:])
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	var alert tls.AlertError
	if errors.As(err, &alert) || isRemoteAlert(err) {
		return err
	}
	return nil
}

// isRemoteAlert reports whether err is an alert sent by the peer, which
// crypto/tls reports as an unexported type whose text starts "remote error".
func isRemoteAlert(err error) bool {
	const prefix = "remote error: "
	s := err.Error()
	return len(s) >= len(prefix) && s[:len(prefix)] == prefix
}
