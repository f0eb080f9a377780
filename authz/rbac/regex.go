package rbac

import (
	"fmt"
	"regexp/syntax"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/reflect/protopath"
	"google.golang.org/protobuf/reflect/protorange"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// EnvoyDefaultRegexProgramSize is Envoy's default
// re2.max_program_size.error_level: a safe_regex whose compiled program is
// larger is rejected unless that runtime value is raised (Istio's bootstrap
// raises it to 32768).
const EnvoyDefaultRegexProgramSize = 100

// regexNotes returns a note for every regular expression in p whose
// program is larger than EnvoyDefaultRegexProgramSize, as estimated with
// Go's RE2-syntax compiler.
func regexNotes(name string, p *rbacv3.Policy) []string {
	var notes []string
	_ = protorange.Range(p.ProtoReflect(), func(v protopath.Values) error {
		m, ok := v.Index(-1).Value.Interface().(protoreflect.Message)
		if !ok {
			return nil
		}
		re, ok := m.Interface().(*matcherv3.RegexMatcher)
		if !ok {
			return nil
		}
		if n := programSize(re.GetRegex()); n > EnvoyDefaultRegexProgramSize {
			notes = append(notes, fmt.Sprintf("%s: regex %q has a program size of about %d, above Envoy's default re2.max_program_size.error_level of %d; raise it in the Envoy runtime as Istio does", name, re.GetRegex(), n, EnvoyDefaultRegexProgramSize))
		}
		return nil
	})
	return notes
}

func programSize(expr string) int {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return 0
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return 0
	}
	return len(prog.Inst)
}
