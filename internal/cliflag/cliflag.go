// Package cliflag connects command-line flags to environment variables and
// provides the flag value types Castellan's commands share.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// EnvName returns the environment variable that backs the flag name under
// prefix: "data-dir" with prefix "CASTELLAN" becomes CASTELLAN_DATA_DIR.
func EnvName(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs and then, for every flag not given on the command
// line, applies the value of its environment variable (see EnvName) when that
// variable is set. Command-line flags win over the environment. An invalid
// environment value is an error that names the variable.
func Parse(fs *flag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := EnvName(prefix, f.Name)
		v, ok := lookup(env)
		if !ok {
			return
		}
		if rl, isList := f.Value.(*StringList); isList {
			// A list from the environment is comma-separated.
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item != "" {
					_ = rl.Set(item)
				}
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for environment variable %s (flag -%s): %w", v, env, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// StringList is a repeatable string flag. The first Set replaces the
// defaults; later ones append.
type StringList struct {
	values   []string
	replaced bool
}

// NewStringList returns a StringList holding defaults until the flag is set.
func NewStringList(defaults ...string) *StringList {
	return &StringList{values: append([]string(nil), defaults...)}
}

// String implements flag.Value.
func (l *StringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.values, ",")
}

// Set implements flag.Value.
func (l *StringList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	if !l.replaced {
		l.values = nil
		l.replaced = true
	}
	l.values = append(l.values, v)
	return nil
}

// Values returns the current values.
func (l *StringList) Values() []string { return append([]string(nil), l.values...) }

// UsageError is a bad flag or argument. Its ExitCode is 2. When the user
// asked for help (-h), it wraps flag.ErrHelp and its message is empty: the
// usage has already been printed.
type UsageError struct{ Err error }

func (e UsageError) Error() string {
	if errors.Is(e.Err, flag.ErrHelp) {
		return ""
	}
	return e.Err.Error()
}

// Unwrap returns the underlying error.
func (e UsageError) Unwrap() error { return e.Err }

// ExitCode returns 2, the conventional exit code of a usage error.
func (e UsageError) ExitCode() int { return 2 }

// ExitCode reports err on stderr, prefixed with prog, and returns the
// process exit code for it: 0 for nil or a request for help, the code an
// error chooses with an ExitCode() int method (a UsageError's is 2), and 1
// for any other error. An error with an empty message is not printed.
func ExitCode(stderr io.Writer, prog string, err error) int {
	var ec interface{ ExitCode() int }
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ec):
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(stderr, "%s: %s\n", prog, msg)
		}
		return ec.ExitCode()
	default:
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
}

// NewLogger returns a JSON logger on w at the level named by a --log-level
// flag: debug, info, warn or error.
func NewLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}
