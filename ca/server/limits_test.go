package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// TestPprofOnlyOnLoopback: /debug/pprof/ is never served on the HTTP
// address (which listens on all interfaces by default), only on its own
// loopback address, and a non-loopback pprof address is refused.
func TestPprofOnlyOnLoopback(t *testing.T) {
	get := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	s := start(t, func(c *Config) { c.PprofAddr = "127.0.0.1:0" })
	if code := get("http://" + s.HTTPAddr() + "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("pprof on the HTTP address: %d, want 404", code)
	}
	if code := get("http://" + s.PprofAddr() + "/debug/pprof/"); code != http.StatusOK {
		t.Errorf("pprof on its loopback address: %d, want 200", code)
	}
	off := start(t)
	if off.PprofAddr() != "" {
		t.Errorf("pprof served without being asked for, on %s", off.PprofAddr())
	}
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "192.0.2.1:0"} {
		_, err := New(context.Background(), Config{
			Source: dirSource(t), GRPCAddr: "127.0.0.1:0", HTTPAddr: "-", PprofAddr: addr,
			Authenticator: tokenTable{}, Logger: slog.New(slog.DiscardHandler),
		})
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("PprofAddr %q: err = %v, want a loopback error", addr, err)
		}
	}
}

// TestPeerFailureLimit: a peer that keeps failing authentication is
// refused with ResourceExhausted once its burst is spent, before its token
// is looked at; a good token from it is refused too until the bucket
// refills.
func TestPeerFailureLimit(t *testing.T) {
	s := start(t, func(c *Config) { c.Limits = Limits{PeerFailureRate: 0.001, PeerFailureBurst: 3} })
	csr := csrFor(t, "")
	codesSeen := map[codes.Code]int{}
	for range 6 {
		_, err := s.client.CreateCertificate(context.Background(), "junk", csr, 0)
		codesSeen[status.Code(err)]++
	}
	if codesSeen[codes.Unauthenticated] != 3 || codesSeen[codes.ResourceExhausted] != 3 {
		t.Errorf("answers %v, want 3 Unauthenticated then 3 ResourceExhausted", codesSeen)
	}
	if _, err := s.client.CreateCertificate(context.Background(), "good", csr, 0); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("good token from a limited peer: %v, want ResourceExhausted", err)
	}
	if got := testutil.ToFloat64(s.metrics.limits.peerLimited); got != 4 {
		t.Errorf("castellan_ca_peer_limited_total = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.metrics.authFailures.WithLabelValues("invalid_token")); got != 3 {
		t.Errorf("auth failures counted = %v, want 3 (refused peers' tokens are not checked)", got)
	}
}

func TestPeerLimiterBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := newPeerLimiter(Limits{PeerFailureRate: 1, PeerFailureBurst: 2})
	p.max = 64
	p.now = func() time.Time { return now }
	a := netip.MustParseAddr("10.0.0.1")
	p.fail(a)
	p.fail(a)
	if p.allow(a) {
		t.Fatal("allowed after the burst")
	}
	now = now.Add(time.Second)
	if !p.allow(a) {
		t.Fatal("not allowed after a second at 1/s")
	}
	for i := range 1000 {
		p.fail(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	if n := len(p.buckets); n > p.max {
		t.Errorf("%d buckets, over the bound of %d", n, p.max)
	}
}

func TestConnLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newLimitMetrics(promreg.With(nil))
	l := newConnLimitListener(inner, Limits{MaxConnections: 3, MaxConnectionsPerPeer: 2}, m)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	dial("127.0.0.1")
	dial("127.0.0.1")
	<-accepted
	<-accepted
	if c := dial("127.0.0.1"); !closedByServer(c) {
		t.Error("third connection from one peer was not closed")
	}
	dial("127.0.0.2")
	first := <-accepted
	if c := dial("127.0.0.3"); !closedByServer(c) {
		t.Error("connection past the total limit was not closed")
	}
	// A closed connection gives its slot back.
	first.Close()
	dial("127.0.0.3")
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Error("a freed slot was not reused")
	}
	if got := testutil.ToFloat64(m.connsRefused.WithLabelValues("per_peer")); got != 1 {
		t.Errorf("per-peer refusals = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.connsRefused.WithLabelValues("total")); got != 1 {
		t.Errorf("total refusals = %v, want 1", got)
	}
}

// TestLogLimiter: past the per-interval bound, lines are counted, and one
// summary line reports them when the interval ends.
func TestLogLimiter(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	l := &logLimiter{log: log, perIvl: 5, interval: 50 * time.Millisecond, dropped: dropped}
	allowed := 0
	for range 1000 {
		if l.allow() {
			allowed++
		}
	}
	if allowed != 5 {
		t.Errorf("%d lines allowed in one interval, want 5", allowed)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		out := buf.String()
		mu.Unlock()
		if strings.Contains(out, "suppressed=995") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no summary of the suppressed lines: %q", out)
		}
	}
	if got := testutil.ToFloat64(dropped); got != 995 {
		t.Errorf("suppressed counter = %v, want 995", got)
	}
	if !l.allow() {
		t.Error("a new interval does not log again")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
