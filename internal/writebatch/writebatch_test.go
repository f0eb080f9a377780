package writebatch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the connection under a Conn.
type countingConn struct {
	net.Conn
	writes  atomic.Int64
	entered chan struct{} // when set, each write says it started
	gate    chan struct{} // when set, each write waits for a value
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.entered != nil {
		c.entered <- struct{}{}
	}
	if c.gate != nil {
		<-c.gate
	}
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestConcurrentWritesArriveWholeAndInOrder(t *testing.T) {
	a, b := tcpPair(t)
	w := New(a)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for j := range each {
				// One Write is one record: a writer's records must arrive
				// whole and in its order.
				if _, err := fmt.Fprintf(w, "<%d:%06d>", i, j); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	got := make(chan []byte, 1)
	go func() { all, _ := io.ReadAll(b); got <- all }()
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	all := <-got
	next := make([]int, writers)
	for rec := range bytes.SplitSeq(all, []byte(">")) {
		if len(rec) == 0 {
			continue
		}
		var i, j int
		if _, err := fmt.Sscanf(string(rec), "<%d:%d", &i, &j); err != nil {
			t.Fatalf("torn record %q: %v", rec, err)
		}
		if j != next[i] {
			t.Fatalf("writer %d: record %d arrived when %d was due", i, j, next[i])
		}
		next[i]++
	}
	for i, n := range next {
		if n != each {
			t.Errorf("writer %d: %d of %d records arrived", i, n, each)
		}
	}
}

func TestWritesMadeDuringAWriteGoOutTogether(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a, entered: make(chan struct{}, 2), gate: make(chan struct{})}
	w := New(cc)
	go io.Copy(io.Discard, b)
	if _, err := w.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	<-cc.entered
	// The writer is now held in its first system call; what is written
	// meanwhile must leave in one more.
	for range 100 {
		if _, err := w.Write([]byte("more")); err != nil {
			t.Fatal(err)
		}
	}
	cc.gate <- struct{}{}
	cc.gate <- struct{}{}
	close(cc.gate)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n != 2 {
		t.Errorf("101 writes reached the connection in %d system calls, want 2", n)
	}
}

func TestCloseWritesWhatIsHeld(t *testing.T) {
	a, b := tcpPair(t)
	w := New(a)
	msg := bytes.Repeat([]byte("x"), 3*MaxPending)
	go func() {
		w.Write(msg)
		w.Close()
	}()
	all, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, msg) {
		t.Errorf("read %d bytes, want %d", len(all), len(msg))
	}
}

func TestPeerThatDoesNotRead(t *testing.T) {
	a, _ := tcpPair(t)
	w := New(a)
	w.closeTimeout = 100 * time.Millisecond
	// The peer never reads: the kernel's buffers fill, the writer blocks,
	// and then Write must block too instead of holding without bound.
	blocked := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				blocked <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	w.mu.Lock()
	held := len(w.pending)
	w.mu.Unlock()
	if held > MaxPending {
		t.Errorf("holding %d bytes for a peer that does not read, want at most %d", held, MaxPending)
	}
	select {
	case err := <-blocked:
		t.Fatalf("Write returned %v, want it to wait", err)
	default:
	}
	start := time.Now()
	w.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v for a peer that does not read", d)
	}
	select {
	case err := <-blocked:
		if err == nil {
			t.Error("a Write waiting when the connection closed succeeded")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a Write waiting when the connection closed is still waiting")
	}
}

func TestWriteAfterFailureReturnsTheError(t *testing.T) {
	a, b := tcpPair(t)
	w := New(a)
	defer w.Close()
	b.Close()
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = w.Write(make([]byte, 4<<10))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a closed peer kept succeeding")
	}
	if _, again := w.Write([]byte("x")); !errors.Is(again, err) {
		t.Errorf("next Write: %v, want the connection's error %v", again, err)
	}
}

func TestWriteAfterClose(t *testing.T) {
	a, _ := tcpPair(t)
	w := New(a)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
}
