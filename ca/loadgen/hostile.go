package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// FloodConfig configures Flood: distinct junk tokens sent at a fixed rate,
// as a hostile pod would. Each token is well formed and carries plausible
// claims (issuer, audience, a future exp, a key id), but its signature is
// random bytes, so that only a signature check can refuse it.
type FloodConfig struct {
	// Addr, ServerName and Roots reach the CA, as in Config.
	Addr       string
	ServerName string
	Roots      *x509.CertPool
	// SourceIP, if set, is the local address the flood connects from (for
	// example 127.0.0.2), so that it is one peer distinct from others.
	SourceIP string
	// Rate is the number of junk tokens sent per second. Default: 10000.
	Rate int
	// Connections carry the flood. Default: 4.
	Connections int
	// MaxInFlight bounds the flood's requests in flight; requests past it
	// are counted as skipped. Default: 4096.
	MaxInFlight int
	// Issuer, Audience and KeyID go into every junk token.
	Issuer, Audience, KeyID string
	// CSR is sent with every request. Default: one made by MakeCSRs.
	CSR []byte
}

// FloodResult counts the answers to a flood.
type FloodResult struct {
	Sent    int64
	Skipped int64
	ByCode  map[string]int64
}

// String summarizes r.
func (r *FloodResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d junk tokens sent (%d skipped: too many in flight)", r.Sent, r.Skipped)
	for code, n := range r.ByCode {
		fmt.Fprintf(&b, ", %s %d", code, n)
	}
	return b.String()
}

// JunkToken returns a distinct, well-formed JWT with the given claims and a
// random signature.
func JunkToken(issuer, audience, kid string) string {
	enc := base64.RawURLEncoding.EncodeToString
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT", "kid": kid})
	var jti [12]byte
	_, _ = rand.Read(jti[:])
	now := time.Now().Unix()
	p, _ := json.Marshal(map[string]any{
		"iss": issuer, "aud": []string{audience}, "sub": "system:serviceaccount:default:default",
		"iat": now, "nbf": now, "exp": now + 3600, "jti": enc(jti[:]),
		"kubernetes.io": map[string]any{"namespace": "default", "serviceaccount": map[string]string{"name": "default", "uid": "00000000-0000-0000-0000-000000000000"}},
	})
	var sig [64]byte
	_, _ = rand.Read(sig[:])
	return enc(h) + "." + enc(p) + "." + enc(sig[:])
}

// Flood sends junk tokens until ctx ends and counts the answers.
func Flood(ctx context.Context, cfg FloodConfig) (*FloodResult, error) {
	if cfg.Addr == "" || cfg.Roots == nil {
		return nil, errors.New("loadgen: flood needs Addr and Roots")
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 10000
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 4
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.CSR == nil {
		csrs, err := MakeCSRs(1)
		if err != nil {
			return nil, err
		}
		cfg.CSR = csrs[0]
	}
	var opts []grpc.DialOption
	if cfg.SourceIP != "" {
		ip := net.ParseIP(cfg.SourceIP)
		if ip == nil {
			return nil, fmt.Errorf("loadgen: flood source %q is not an IP address", cfg.SourceIP)
		}
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	clients := make([]*caclient.Client, cfg.Connections)
	for i := range clients {
		c, err := caclient.New(caclient.Config{Addr: cfg.Addr, Roots: cfg.Roots, ServerName: cfg.ServerName, DialOptions: opts})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		clients[i] = c
	}
	var (
		sent, skipped atomic.Int64
		inflight      atomic.Int64
		mu            sync.Mutex
		byCode        = map[string]int64{}
		wg            sync.WaitGroup
	)
	const tick = 10 * time.Millisecond
	perTick := max(1, cfg.Rate*int(tick)/int(time.Second))
	t := time.NewTicker(tick)
	defer t.Stop()
	n := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		for i := 0; i < perTick && ctx.Err() == nil; i++ {
			if inflight.Load() >= int64(cfg.MaxInFlight) {
				skipped.Add(1)
				continue
			}
			inflight.Add(1)
			sent.Add(1)
			c := clients[n%len(clients)]
			n++
			tok := JunkToken(cfg.Issuer, cfg.Audience, cfg.KeyID)
			wg.Go(func() {
				defer inflight.Add(-1)
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				_, err := c.CreateCertificate(rctx, tok, cfg.CSR, 0)
				code := status.Code(err).String()
				mu.Lock()
				byCode[code]++
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return &FloodResult{Sent: sent.Load(), Skipped: skipped.Load(), ByCode: byCode}, nil
}

// HeaderFloodConfig configures HeaderFlood.
type HeaderFloodConfig struct {
	// Addr, ServerName and Roots reach the CA over TLS.
	Addr       string
	ServerName string
	Roots      *x509.CertPool
	// Connections each send one call. Default: 64.
	Connections int
	// Bytes of metadata per call. Default: 8 MiB.
	Bytes int
	// Hold keeps the connections open after sending, until ctx ends, as
	// an attacker holding memory would. Default: return when every
	// connection has sent its call and read the server's answer (or
	// closure).
	Hold bool
}

// HeaderFlood opens cfg.Connections HTTP/2 connections and sends, on each,
// a gRPC call to the certificate service whose header block holds
// cfg.Bytes of metadata, ignoring the server's advertised header-list
// limit as an attacker would. It returns how many bytes of header block
// the server accepted on all connections before it stopped reading or
// refused them.
func HeaderFlood(ctx context.Context, cfg HeaderFloodConfig) (int64, error) {
	if cfg.Connections <= 0 {
		cfg.Connections = 64
	}
	if cfg.Bytes <= 0 {
		cfg.Bytes = 8 << 20
	}
	block := headerBlock(cfg.ServerName, cfg.Bytes)
	var written atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Connections)
	for range cfg.Connections {
		wg.Go(func() {
			n, err := sendHeaders(ctx, cfg, block)
			written.Add(n)
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return written.Load(), <-errs
}

// headerBlock encodes a CreateCertificate request's headers with size
// bytes of extra metadata, in literal fields that are never indexed.
func headerBlock(authority string, size int) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", authority},
		{":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	value := strings.Repeat("x", 8<<10)
	for i := 0; buf.Len() < size; i++ {
		_ = enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: value, Sensitive: true})
	}
	return buf.Bytes()
}

// sendHeaders sends block as one header block (HEADERS and CONTINUATION
// frames) on a new connection, then reads until the server answers or
// closes. It returns the bytes of the block written.
func sendHeaders(ctx context.Context, cfg HeaderFloodConfig, block []byte) (int64, error) {
	d := tls.Dialer{Config: &tls.Config{RootCAs: cfg.Roots, ServerName: cfg.ServerName, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return 0, fmt.Errorf("loadgen: header flood: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		return 0, err
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		return 0, err
	}
	const frameSize = 16 << 10
	var n int64
	for off := 0; off < len(block); off += frameSize {
		end := min(off+frameSize, len(block))
		last := end == len(block)
		if off == 0 {
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[off:end], EndHeaders: last})
		} else {
			err = fr.WriteContinuation(1, last, block[off:end])
		}
		if err != nil {
			// The server stopped reading or closed the connection.
			return n, nil
		}
		n += int64(end - off)
	}
	if cfg.Hold {
		<-ctx.Done()
		return n, nil
	}
	// Read until the server answers the stream or closes the connection.
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return n, nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return n, nil
		case *http2.HeadersFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return n, nil
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return n, nil
			}
		}
	}
}
