package cliflag

import (
	"fmt"
	"io"
	"log/slog"
)

// Log formats, the values of --log-format.
const (
	LogJSON = "json"
	LogText = "text"
)

// NewLogger returns a logger on w at the level named by a --log-level flag
// (debug, info, warn or error), in the format named by a --log-format flag
// (json or text). Durations are written as Go duration strings ("1m30s"),
// not as integers of nanoseconds.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l, ReplaceAttr: durationString}
	switch format {
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case LogText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// NewCLILogger returns a text logger on w for a command's progress
// messages: info level, no timestamps, durations as Go duration strings.
func NewCLILogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return durationString(groups, a)
		},
	}))
}

// durationString is a slog ReplaceAttr that renders a time.Duration with
// its String method.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
