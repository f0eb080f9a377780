// Package writebatch gathers the writes made to a connection by several
// producers into fewer system calls.
//
// A multiplexed protocol such as HTTP/2 writes each response as soon as it
// is ready. When many responses become ready close together, as on a
// connection that carries many concurrent calls, each write costs a system
// call (and, on a TLS connection, a record and its seal) for a few
// kilobytes. A [Conn] hands its writes to one writer goroutine instead,
// which yields the processor once before writing, so that writes made in
// the meantime go out in the same system call. An idle process writes at
// once: the yield returns at once when nothing else is runnable.
package writebatch

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// MaxPending is the most bytes a Conn holds that its writer has not taken:
// a Write past it waits, so a peer that does not read holds at most this
// much per connection beyond what the writer is writing.
const MaxPending = 64 << 10

// CloseTimeout bounds how long Close waits for held writes to go out.
const CloseTimeout = time.Second

// Conn is a net.Conn whose writes are gathered and written by a writer
// goroutine. Reads and everything but Write and Close pass through.
//
// A Write returns as soon as its bytes are held; an error of the
// connection is returned by the next Write, as a buffered writer does.
// Close writes what is held (for at most CloseTimeout) and then closes the
// connection.
type Conn struct {
	net.Conn

	mu      sync.Mutex
	taken   *sync.Cond // the writer took the pending bytes, or failed
	pending []byte
	err     error
	closing bool

	closeTimeout time.Duration

	kick      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// New returns a Conn that writes to c and starts its writer. The caller
// must Close it.
func New(c net.Conn) *Conn {
	w := &Conn{Conn: c, closeTimeout: CloseTimeout, kick: make(chan struct{}, 1), done: make(chan struct{})}
	w.taken = sync.NewCond(&w.mu)
	go w.run()
	return w
}

// Write holds a copy of p for the writer.
func (w *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.mu.Lock()
	for w.err == nil && !w.closing && len(w.pending) > 0 && len(w.pending)+len(p) > MaxPending {
		w.taken.Wait()
	}
	switch {
	case w.err != nil:
		err := w.err
		w.mu.Unlock()
		return 0, err
	case w.closing:
		w.mu.Unlock()
		return 0, net.ErrClosed
	}
	w.pending = append(w.pending, p...)
	select {
	case w.kick <- struct{}{}:
	default:
	}
	w.mu.Unlock()
	return len(p), nil
}

// run writes what Write holds until the connection closes or fails.
func (w *Conn) run() {
	defer close(w.done)
	var buf []byte
	for {
		_, open := <-w.kick
		if open {
			// Let the goroutines that are ready to run go first: what
			// they write meanwhile joins this batch.
			runtime.Gosched()
		}
		w.mu.Lock()
		buf, w.pending = w.pending, buf[:0]
		w.mu.Unlock()
		w.taken.Broadcast()
		if len(buf) > 0 {
			if _, err := w.Conn.Write(buf); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				w.taken.Broadcast()
				return
			}
		}
		if !open {
			return
		}
		if cap(buf) > MaxPending {
			buf = nil // a burst's buffer is not kept
		}
	}
}

// Close writes what is held, for at most CloseTimeout, and closes the
// connection.
func (w *Conn) Close() error {
	w.closeOnce.Do(func() {
		_ = w.Conn.SetWriteDeadline(time.Now().Add(w.closeTimeout))
		w.mu.Lock()
		w.closing = true
		close(w.kick)
		w.mu.Unlock()
		w.taken.Broadcast()
		<-w.done
		w.closeErr = w.Conn.Close()
	})
	return w.closeErr
}
