package cliflag

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"
)

// Exit statuses every command shares. A command's own statuses start at 3
// and never reuse these.
const (
	// ExitOK is success, and the status of --help.
	ExitOK = 0
	// ExitError is any failure without a status of its own.
	ExitError = 1
	// ExitUsage is a bad flag, argument or flag combination.
	ExitUsage = 2
)

// UsageError is a bad flag or argument. Its ExitCode is ExitUsage. When
// the user asked for help (-h), it wraps pflag.ErrHelp and its message is
// empty: the usage has already been printed.
type UsageError struct{ Err error }

func (e UsageError) Error() string {
	if errors.Is(e.Err, pflag.ErrHelp) {
		return ""
	}
	return e.Err.Error()
}

// Unwrap returns the underlying error.
func (e UsageError) Unwrap() error { return e.Err }

// ExitCode returns ExitUsage.
func (e UsageError) ExitCode() int { return ExitUsage }

// StatusError is a result with an exit status of the command's own (3 and
// up), with or without a message. An empty message prints nothing: the
// command's output already says it (a denied request, an invalid
// certificate).
type StatusError struct {
	Code int
	Err  error
}

func (e StatusError) Error() string {
	if e.Err == nil || errors.Is(e.Err, pflag.ErrHelp) {
		return ""
	}
	return e.Err.Error()
}

// Unwrap returns the underlying error.
func (e StatusError) Unwrap() error { return e.Err }

// ExitCode returns e.Code.
func (e StatusError) ExitCode() int { return e.Code }

// jsonError marks an error to be reported as a JSON object.
type jsonError struct{ err error }

func (e jsonError) Error() string { return e.err.Error() }
func (e jsonError) Unwrap() error { return e.err }

// ErrorJSON is what ExitCode prints on stderr for an error under -o json.
type ErrorJSON struct {
	// Error is the message, prefixed with the command.
	Error string `json:"error"`
	// Code is the process exit status.
	Code int `json:"code"`
}

// ExitCode reports err on stderr, prefixed with prog, and returns the
// process exit status for it: 0 for nil or a request for help, the status
// an error chooses with an ExitCode() int method (a UsageError's is 2), and
// 1 for any other error. An error with an empty message is not printed. An
// error from a command run with -o json (see Output.Errors) is printed as
// one JSON object, ErrorJSON, on one line; otherwise as "prog: message",
// and a usage error adds where to find the usage.
func ExitCode(stderr io.Writer, prog string, err error) int {
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return ExitOK
	}
	code := ExitError
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		code = ec.ExitCode()
	}
	msg := err.Error()
	if msg == "" {
		return code
	}
	var je jsonError
	if errors.As(err, &je) {
		b, _ := json.Marshal(ErrorJSON{Error: prog + ": " + msg, Code: code})
		fmt.Fprintf(stderr, "%s\n", b)
		return code
	}
	fmt.Fprintf(stderr, "%s: %s\n", prog, msg)
	if code == ExitUsage {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", prog)
	}
	return code
}
