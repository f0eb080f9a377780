package cliflag

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// FuzzParse parses arbitrary arguments and environment values: Parse never
// panics, fails only with a UsageError (or help), and the single-dash
// rewrite is idempotent and never touches what follows "--".
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"--data-dir\x00/d", "-data-dir=/d", "-o\x00json", "-ojson", "--output=yaml\x00--bogus",
		"--\x00-data-dir", "--kubeconfig\x00-data-dir", "-h", "--format\x00json", "-token-audience\x00a\x00-token-audience=b",
	} {
		f.Add(seed, "2h")
	}
	f.Fuzz(func(t *testing.T, joined, env string) {
		args := strings.Split(joined, "\x00")
		fs := NewFlagSet("t", Help{}, io.Discard, io.Discard)
		fs.String("data-dir", "", "")
		fs.String("kubeconfig", "", "")
		StandardEnv(fs, "kubeconfig", "KUBECONFIG")
		fs.Duration("default-ttl", time.Hour, "")
		fs.Bool("force", false, "")
		fs.Var(NewStringList(), "token-audience", "")
		o := AddOutput(fs, OutputText, OutputText, OutputJSON, OutputYAML)

		once := normalizeSingleDash(fs, args)
		if twice := normalizeSingleDash(fs, once); !slices.Equal(once, twice) {
			t.Fatalf("rewrite not idempotent: %q -> %q -> %q", args, once, twice)
		}
		if i := slices.Index(args, "--"); i >= 0 && !slices.Equal(args[i:], once[len(once)-len(args)+i:]) {
			t.Fatalf("arguments after -- rewritten: %q -> %q", args, once)
		}
		lookup := func(k string) (string, bool) { return env, k == "CASTELLAN_DEFAULT_TTL" || k == "KUBECONFIG" }
		err := Parse(fs, EnvPrefix, args, lookup)
		var ue UsageError
		if err != nil && !errors.As(err, &ue) && !errors.Is(err, pflag.ErrHelp) {
			t.Fatalf("Parse(%q) = %v, not a usage error", args, err)
		}
		if f := o.Format(); f != OutputText && f != OutputJSON && f != OutputYAML {
			t.Fatalf("output format %q", f)
		}
	})
}
