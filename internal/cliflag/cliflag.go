// Package cliflag connects command-line flags to environment variables and
// provides the flag value types Castellan's commands share.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
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
