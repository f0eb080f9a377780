// Package filewatch polls a file that another process rewrites (a trust
// bundle, a document of federated bundles, a mounted certificate) and
// hands each new content to its user. What the user last accepted stays
// in force while the file is missing, unreadable or invalid, and each
// distinct error is reported once, not on every poll.
package filewatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// Config says which file to poll and what to do with it.
type Config struct {
	// Path is the file polled.
	Path string
	// MaxSize is the largest content accepted, in bytes; a larger file is
	// an error. It must be positive, unless Read is set.
	MaxSize int64
	// Interval is the time between two polls in Run. It must be positive.
	Interval time.Duration
	// Load parses and installs content that differs from what was last
	// loaded (and, the first time, any content). An error leaves the last
	// content loaded in force, and the file is offered again on the next
	// poll (its error is not reported twice).
	Load func(data []byte) error
	// Report is told each error once: a missing or unreadable file, or
	// Load's error. An error whose message is the same as the previous
	// one's is not reported again until a load succeeds. Nil: errors are
	// dropped.
	Report func(err error)
	// MayBeMissing makes a file that has never existed no error: nothing
	// is loaded and nothing reported. A file that goes away after a load
	// is still reported, and the content loaded stays in force.
	MayBeMissing bool
	// Read, if set, replaces reading Path: it returns what is compared
	// with the last content loaded and handed to Load. It serves a set of
	// files that change together (a certificate and its key), for which
	// it can return a digest of them all while Load reads the files
	// itself; Path then names the set in messages. Read enforces its own
	// size limits, and its errors are reported as they are (MayBeMissing
	// does not apply).
	Read func() ([]byte, error)
}

// Watcher polls one file. It is safe for concurrent use: Run may poll
// while another goroutine calls Check, and Load and Report are called by
// one at a time.
type Watcher struct {
	cfg Config

	mu      sync.Mutex // guards the fields below
	last    []byte
	loaded  bool
	lastErr string
}

// New returns a Watcher for cfg. It reads nothing until Check or Run.
func New(cfg Config) (*Watcher, error) {
	switch {
	case cfg.Path == "":
		return nil, errors.New("filewatch: no path")
	case cfg.MaxSize <= 0 && cfg.Read == nil:
		return nil, fmt.Errorf("filewatch: %s: size limit %d is not positive", cfg.Path, cfg.MaxSize)
	case cfg.Interval <= 0:
		return nil, fmt.Errorf("filewatch: %s: poll interval %s is not positive", cfg.Path, cfg.Interval)
	case cfg.Load == nil:
		return nil, fmt.Errorf("filewatch: %s: no Load", cfg.Path)
	}
	return &Watcher{cfg: cfg}, nil
}

// Check reads the file once and loads it if it changed. It reports
// whether new content was loaded.
func (w *Watcher) Check() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b []byte
	var err error
	if w.cfg.Read != nil {
		b, err = w.cfg.Read()
	} else {
		b, err = smallfile.Read(w.cfg.Path, w.cfg.MaxSize)
	}
	switch {
	case err != nil && w.cfg.Read != nil:
		w.report(err)
		return false
	case errors.Is(err, fs.ErrNotExist) && w.cfg.MayBeMissing && !w.loaded:
		return false
	case errors.Is(err, fs.ErrNotExist) && w.loaded:
		w.report(fmt.Errorf("%s is gone; keeping what was loaded from it", w.cfg.Path))
		return false
	case err != nil:
		w.report(err)
		return false
	case w.loaded && bytes.Equal(b, w.last):
		return false
	}
	if err := w.cfg.Load(b); err != nil {
		w.report(err)
		return false
	}
	w.last, w.loaded, w.lastErr = b, true, ""
	return true
}

// Seed records data as the content loaded, for a user that loaded it
// before the first Check: Check then loads only what differs from it.
func (w *Watcher) Seed(data []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last, w.loaded, w.lastErr = data, true, ""
}

// Run calls Check every Interval until ctx ends. It returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Check()
		}
	}
}

func (w *Watcher) report(err error) {
	msg := err.Error()
	if msg == w.lastErr {
		return
	}
	w.lastErr = msg
	if w.cfg.Report != nil {
		w.cfg.Report(err)
	}
}
