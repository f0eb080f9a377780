package testpki

import (
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"
)

// ServeTLS runs a TLS server with conf on 127.0.0.1, on a port the system
// picks, and returns its address. Each connection completes its handshake
// and is then held, its input discarded, until the client hangs up or ten
// seconds pass. The server and its connections are closed when the test
// ends.
func ServeTLS(t testing.TB, conf *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
			})
		}
	})
	return ln.Addr().String()
}
