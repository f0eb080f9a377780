// Package cliflag holds the command-line conventions every Castellan
// command follows, in the manner of kubectl and istioctl: POSIX flags
// (spf13/pflag: --data-dir, -o json), --help on stdout with exit status 0,
// a CASTELLAN_ environment variable behind every flag, the standard
// variables (KUBECONFIG, VAULT_ADDR, ...) behind the flags they name, one
// exit-status scheme, errors printed once (as JSON under -o json), and
// loggers whose durations read as Go durations.
package cliflag

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// EnvPrefix is the prefix of the environment variable behind every flag of
// every Castellan command: --data-dir is also CASTELLAN_DATA_DIR.
const EnvPrefix = "CASTELLAN"

// annotationStandardEnv is the pflag annotation that lists the standard
// environment variables a flag reads after its CASTELLAN_ one;
// annotationFromEnv names the variable a flag's value was taken from.
const (
	annotationStandardEnv = "castellan.env"
	annotationFromEnv     = "castellan.env.from"
)

// EnvName returns the environment variable that backs the flag name under
// prefix: "data-dir" with prefix "CASTELLAN" becomes CASTELLAN_DATA_DIR.
func EnvName(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Help is what a command's --help prints besides its flags.
type Help struct {
	// Usage is the line after "Usage:"; empty means "<name> [flags]".
	Usage string
	// Summary says what the command does, in a sentence or a paragraph.
	Summary string
	// Exit lists the command's own exit statuses (3 and up), one per
	// line, as "3  the request is denied".
	Exit string
}

// NewFlagSet returns the flag set of the command name ("castellan ca
// rotate prepare"). Errors are returned, never printed by pflag itself, so
// that ExitCode prints each once; -h and --help print the usage (h, then
// the flags, the environment and the exit statuses) on stdout; notices
// about deprecated flags go to stderr.
func NewFlagSet(name string, h Help, stdout, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { PrintUsage(stdout, fs, h) }
	return fs
}

// PrintUsage writes fs's help to w: usage line, summary, flags,
// environment and exit statuses.
func PrintUsage(w io.Writer, fs *pflag.FlagSet, h Help) {
	usage := h.Usage
	if usage == "" {
		usage = fs.Name() + " [flags]"
	}
	fmt.Fprintf(w, "Usage:\n  %s\n", usage)
	if h.Summary != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(h.Summary, "\n"))
	}
	if fs.HasAvailableFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
	}
	var std []string
	fs.VisitAll(func(f *pflag.Flag) {
		if vars := f.Annotations[annotationStandardEnv]; len(vars) > 0 && !f.Hidden {
			std = append(std, fmt.Sprintf("--%s: %s", f.Name, strings.Join(vars, ", ")))
		}
	})
	fmt.Fprintf(w, "\nEnvironment:\n  Every flag is also a %s_ variable: --some-flag is %s.\n  A flag on the command line wins over its variable.\n",
		EnvPrefix, EnvName(EnvPrefix, "some-flag"))
	if len(std) > 0 {
		fmt.Fprintf(w, "  Standard variables, read when neither the flag nor its %s_ variable is set:\n", EnvPrefix)
		for _, s := range std {
			fmt.Fprintf(w, "    %s\n", s)
		}
	}
	fmt.Fprintf(w, "\nExit status:\n  0  success\n  1  error\n  2  usage: a bad flag or argument\n")
	for _, l := range strings.Split(strings.TrimSpace(h.Exit), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}

// StandardEnv makes the flag name also read the standard environment
// variables vars (KUBECONFIG, VAULT_ADDR, ...) when neither the flag nor
// its CASTELLAN_ variable is set. The first variable set wins.
func StandardEnv(fs *pflag.FlagSet, name string, vars ...string) {
	if err := fs.SetAnnotation(name, annotationStandardEnv, vars); err != nil {
		panic(fmt.Sprintf("cliflag: StandardEnv: %v", err)) // a programming error: no such flag
	}
}

// Parse parses args into fs and then, for every flag not given on the
// command line, applies the value of its environment variable (see
// EnvName) when that variable is set, else that of its first standard
// variable that is set (see StandardEnv). The command line wins over the
// environment. A deprecated flag's variable is read only when no other flag
// sharing its value was set. An invalid environment value is an error that
// names the variable.
//
// A long flag written with one dash (-data-dir), as Go's flag package
// accepted, is read as --data-dir, with a notice on fs's output.
//
// A parse error is a UsageError; a request for help is pflag.ErrHelp, after
// the usage has been printed.
func Parse(fs *pflag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	args = normalizeSingleDash(fs, args)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		// Under -o json, report the error as JSON even though the
		// parse stopped before or at -o.
		presetOutput(fs, prefix, args, lookup)
		return UsageError{Err: err}
	}
	// Deprecated flags come last, and only for a value no other flag has
	// set: CASTELLAN_FORMAT still works, but CASTELLAN_OUTPUT or -o wins.
	var errs []error
	touched := map[pflag.Value]bool{}
	apply := func(f *pflag.Flag) {
		if f.Changed {
			touch(touched, f.Value)
			return
		}
		v, env, ok := envValue(f, prefix, lookup)
		if !ok {
			return
		}
		if err := setFromEnv(f, v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for environment variable %s (flag --%s): %w", v, env, f.Name, err))
			return
		}
		touch(touched, f.Value)
		_ = fs.SetAnnotation(f.Name, annotationFromEnv, []string{env})
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Deprecated == "" {
			apply(f)
		}
	})
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Deprecated != "" && !isTouched(touched, f.Value) {
			apply(f)
		}
	})
	if err := errors.Join(errs...); err != nil {
		return UsageError{Err: err}
	}
	return nil
}

// envValue returns the environment value for f: its prefixed variable,
// else the first of its standard variables that is set and not empty.
func envValue(f *pflag.Flag, prefix string, lookup func(string) (string, bool)) (value, name string, ok bool) {
	name = EnvName(prefix, f.Name)
	if v, ok := lookup(name); ok {
		return v, name, true
	}
	for _, std := range f.Annotations[annotationStandardEnv] {
		if v, ok := lookup(std); ok && v != "" {
			return v, std, true
		}
	}
	return "", "", false
}

// touch and isTouched record the flag values that have been set, so that
// a deprecated alias sharing one is not applied over it. Only pointer
// values are recorded (every pflag value is one); others count as untouched.
func touch(m map[pflag.Value]bool, v pflag.Value) {
	if reflect.ValueOf(v).Kind() == reflect.Pointer {
		m[v] = true
	}
}

func isTouched(m map[pflag.Value]bool, v pflag.Value) bool {
	return reflect.ValueOf(v).Kind() == reflect.Pointer && m[v]
}

// FromStandardEnv reports whether the value of the flag name came from one
// of its standard variables (see StandardEnv) rather than from the command
// line, its CASTELLAN_ variable or its default. A command may let an
// explicit flag that excludes this one win over such a value.
func FromStandardEnv(fs *pflag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	from := f.Annotations[annotationFromEnv]
	return len(from) == 1 && slices.Contains(f.Annotations[annotationStandardEnv], from[0])
}

// setFromEnv sets f from an environment value. A repeatable flag takes a
// comma-separated list.
func setFromEnv(f *pflag.Flag, v string) error {
	if _, isList := f.Value.(*StringList); isList {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				if err := f.Value.Set(item); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return f.Value.Set(v)
}

// normalizeSingleDash rewrites "-name" and "-name=value", where name is a
// long flag of fs, as "--name...", and says so on fs's output. An argument
// that is the value of the flag before it, and everything after "--", is
// left alone.
func normalizeSingleDash(fs *pflag.FlagSet, args []string) []string {
	var out []string
	takesValue := false
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if takesValue {
			takesValue = false
			out = append(out, a)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		dashes := len(a) - len(strings.TrimLeft(a, "-"))
		f := fs.Lookup(name)
		if dashes == 1 && len(name) > 1 && f != nil {
			fmt.Fprintf(fs.Output(), "%s: %s is read as -%s; write long flags with two dashes\n", fs.Name(), a, a)
			a = "-" + a
			dashes = 2
		}
		if dashes == 2 && f != nil && !hasValue && f.NoOptDefVal == "" {
			takesValue = true
		}
		out = append(out, a)
	}
	return out
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

// String implements pflag.Value.
func (l *StringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.values, ",")
}

// Set implements pflag.Value.
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

// Type implements pflag.Value; help shows it as the flag's argument.
func (l *StringList) Type() string { return "strings" }

// Values returns the current values.
func (l *StringList) Values() []string { return append([]string(nil), l.values...) }
