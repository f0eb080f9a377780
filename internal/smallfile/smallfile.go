// Package smallfile reads files that must be small (a PIN, a token, a
// certificate, a /proc entry) without trusting them to be: at most the
// limit and one byte more is ever read, so a huge or endless file (a
// mistaken path, /dev/zero) is refused instead of exhausting memory.
package smallfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is wrapped by Read's error for a file over its limit.
var ErrTooLarge = errors.New("file is over its size limit")

// Read returns the content of the file at path, failing with ErrTooLarge
// if it holds more than limit bytes. Errors name the path.
func Read(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: %w of %d bytes", path, ErrTooLarge, limit)
	}
	return b, nil
}
