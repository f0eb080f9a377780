package rbac

import (
	"fmt"
	"regexp/syntax"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// EnvoyDefaultRegexProgramSize is Envoy's default
// re2.max_program_size.error_level: a safe_regex whose compiled program is
// larger is rejected unless that runtime value is raised (Istio's bootstrap
// raises it to 32768).
const EnvoyDefaultRegexProgramSize = 100

// regexNotes returns a note for every regular expression in p whose
// program is larger than EnvoyDefaultRegexProgramSize, as estimated with
// Go's RE2-syntax compiler. It looks where the generator puts regexes.
func regexNotes(name string, p *rbacv3.Policy) []string {
	var notes []string
	check := func(m *matcherv3.StringMatcher) {
		re := m.GetSafeRegex().GetRegex()
		if len(re) <= EnvoyDefaultRegexProgramSize-10 {
			// The generated regexes are literals and simple classes, at
			// most one instruction per byte plus a few: too short to
			// matter, and not worth compiling.
			return
		}
		if n := programSize(re); n > EnvoyDefaultRegexProgramSize {
			notes = append(notes, fmt.Sprintf("%s: regex %q has a program size of about %d, above Envoy's default re2.max_program_size.error_level of %d; raise it in the Envoy runtime as Istio does", name, re, n, EnvoyDefaultRegexProgramSize))
		}
	}
	header := func(h *routev3.HeaderMatcher) { check(h.GetStringMatch()) }
	var perm func(*rbacv3.Permission)
	perm = func(x *rbacv3.Permission) {
		for _, s := range x.GetAndRules().GetRules() {
			perm(s)
		}
		for _, s := range x.GetOrRules().GetRules() {
			perm(s)
		}
		if n := x.GetNotRule(); n != nil {
			perm(n)
		}
		header(x.GetHeader())
		check(x.GetUrlPath().GetPath())
		check(x.GetRequestedServerName())
	}
	var prin func(*rbacv3.Principal)
	prin = func(x *rbacv3.Principal) {
		for _, s := range x.GetAndIds().GetIds() {
			prin(s)
		}
		for _, s := range x.GetOrIds().GetIds() {
			prin(s)
		}
		if n := x.GetNotId(); n != nil {
			prin(n)
		}
		check(x.GetAuthenticated().GetPrincipalName())
		header(x.GetHeader())
		v := x.GetMetadata().GetValue()
		check(v.GetStringMatch())
		check(v.GetListMatch().GetOneOf().GetStringMatch())
	}
	for _, x := range p.GetPermissions() {
		perm(x)
	}
	for _, x := range p.GetPrincipals() {
		prin(x)
	}
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
