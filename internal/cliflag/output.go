package cliflag

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Output formats.
const (
	OutputText = "text"
	OutputJSON = "json"
	OutputYAML = "yaml"
)

// Output is the value of -o/--output: the format a command writes its
// structured output in. The zero value is not usable; see AddOutput.
type Output struct {
	format  string
	allowed []string
}

// AddOutput registers -o/--output on fs, defaulting to def and accepting
// the formats allowed (def first if it is among them), and --format as its
// deprecated alias. It returns the value to read after parsing.
func AddOutput(fs *pflag.FlagSet, def string, allowed ...string) *Output {
	o := &Output{format: def, allowed: allowed}
	fs.VarP(o, "output", "o", "output format: "+strings.Join(allowed, ", "))
	fs.Var(o, "format", "deprecated: use -o/--output")
	_ = fs.MarkDeprecated("format", "use -o/--output")
	return o
}

// String implements pflag.Value.
func (o *Output) String() string { return o.format }

// Set implements pflag.Value.
func (o *Output) Set(v string) error {
	if !slices.Contains(o.allowed, v) {
		return fmt.Errorf("want %s", orList(o.allowed))
	}
	o.format = v
	return nil
}

// Type implements pflag.Value.
func (o *Output) Type() string { return "format" }

// Format returns the chosen format.
func (o *Output) Format() string { return o.format }

// Errors returns err marked to be printed by ExitCode as a JSON object when
// the output is json, and err unchanged otherwise.
func (o *Output) Errors(err error) error {
	if err == nil || o == nil || o.format != OutputJSON {
		return err
	}
	return jsonError{err: err}
}

// Write writes v as indented JSON or as YAML, following the output format,
// or calls text for the text format.
func (o *Output) Write(w io.Writer, v any, text func(io.Writer) error) error {
	switch o.format {
	case OutputJSON, OutputYAML:
		return WriteDocument(w, v, o.format)
	}
	if text == nil {
		return fmt.Errorf("no text form; use -o json or -o yaml")
	}
	return text(w)
}

// WriteDocument writes v as indented JSON (format "json") or YAML ("yaml").
// YAML is converted from the JSON encoding, so the field names are the same.
func WriteDocument(w io.Writer, v any, format string) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if format == OutputYAML {
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// presetOutput sets fs's Output, if it has one, from args and the
// environment as far as they can be read when the parse failed, so that
// the parse error itself is reported in the format asked for.
func presetOutput(fs *pflag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) {
	f := fs.Lookup("output")
	if f == nil || f.Changed {
		return
	}
	o, ok := f.Value.(*Output)
	if !ok {
		return
	}
	if v, ok := lookup(EnvName(prefix, "output")); ok {
		_ = o.Set(v)
	}
	for i, a := range args {
		var v string
		switch {
		case a == "--":
			return
		case a == "-o" || a == "--output" || a == "--format":
			if i+1 < len(args) {
				v = args[i+1]
			}
		case strings.HasPrefix(a, "--output="), strings.HasPrefix(a, "--format="):
			_, v, _ = strings.Cut(a, "=")
		case strings.HasPrefix(a, "-o"):
			v = strings.TrimPrefix(strings.TrimPrefix(a, "-o"), "=")
		default:
			continue
		}
		_ = o.Set(v)
	}
}

func orList(items []string) string {
	switch len(items) {
	case 0:
		return "nothing"
	case 1:
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}
