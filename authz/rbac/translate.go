// Package rbac translates Istio AuthorizationPolicies into Envoy RBAC
// filters: envoy.filters.http.rbac for HTTP filter chains and
// envoy.filters.network.rbac for TCP ones, with Istio's semantics.
//
// Translation is per policy (Translate) and then per workload (Build), so a
// changed policy is translated once however many workloads it applies to.
//
// requestPrincipals and the request.auth.* conditions match the verified
// JWT's claims in the dynamic metadata of Envoy's own JWT filter
// (envoy.filters.http.jwt_authn, with payload_in_metadata: "payload", as
// Istio configures it), so the filters work with a stock Envoy that runs
// that filter before them.
//
// Namespaces, service accounts, trust domains and some wildcard principals
// become safe_regex matchers. For long names their RE2 program can exceed
// Envoy's default re2.max_program_size.error_level (100); Istio's bootstrap
// raises that runtime value to 32768, and the Envoy that loads this
// configuration needs the same. Translation notes each such regex.
package rbac

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	securityv1 "istio.io/api/security/v1"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/castellan-mesh/castellan/authz/policy"
)

// DefaultTrustDomain is the trust domain used when Config.TrustDomain is
// empty.
const DefaultTrustDomain = "cluster.local"

// Config configures a Translator.
type Config struct {
	// TrustDomain is the mesh's trust domain. Empty means
	// DefaultTrustDomain.
	TrustDomain string
	// TrustDomainAliases are trust domains treated as the same as
	// TrustDomain: a principal written in any of them matches a peer in
	// any of them. Nil means none.
	TrustDomainAliases []string
}

// Translator translates AuthorizationPolicies. It is immutable and safe for
// concurrent use.
type Translator struct {
	bundle []string // the trust domain, then its aliases, without duplicates
}

// NewTranslator returns a Translator for cfg.
func NewTranslator(cfg Config) *Translator {
	td := cfg.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	bundle := []string{td}
	for _, a := range cfg.TrustDomainAliases {
		if a != "" && !slices.Contains(bundle, a) {
			bundle = append(bundle, a)
		}
	}
	return &Translator{bundle: bundle}
}

// Rule is one generated Envoy RBAC policy, named after the Istio rule it
// comes from.
type Rule struct {
	Name   string
	Policy *rbacv3.Policy

	// entry is the policy encoded once, as an entry of RBAC.policies, so
	// that Build assembles filters without encoding it again.
	entry []byte
}

// newRule validates p with Envoy's constraints and encodes it.
func newRule(name string, p *rbacv3.Policy) (Rule, error) {
	if err := p.ValidateAll(); err != nil {
		return Rule{}, fmt.Errorf("generated policy is invalid: %w", err)
	}
	entry, err := encodeEntry(name, p)
	if err != nil {
		return Rule{}, err
	}
	return Rule{Name: name, Policy: p, entry: entry}, nil
}

// Translation is the Envoy form of one AuthorizationPolicy.
type Translation struct {
	Key policy.Key
	// Action is the Envoy action: LOG for AUDIT, DENY for DENY (and for
	// the unsupported CUSTOM), ALLOW for ALLOW.
	Action rbacv3.RBAC_Action
	// DryRun policies become shadow rules.
	DryRun bool
	// HTTP holds the policies for HTTP filter chains.
	HTTP []Rule
	// TCP holds the policies for TCP filter chains.
	TCP []Rule
	// Notes explains rules that were changed for TCP: ALLOW rules dropped
	// because they use HTTP-only fields, and DENY or AUDIT rules whose
	// HTTP-only fields were dropped.
	Notes []string
}

// ErrCustomUnsupported is returned (wrapped) for a policy with action
// CUSTOM. Castellan does not configure ext_authz; such a policy is enforced
// as DENY, so the requests it would send to the extension are refused
// rather than let through.
var ErrCustomUnsupported = errors.New("action CUSTOM (ext_authz) is not supported; its rules are enforced as DENY so that matching requests are refused")

// RuleName returns Istio's name for rule i of a policy:
// "ns[<ns>]-policy[<name>]-rule[<i>]".
func RuleName(namespace, name string, i int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", namespace, name, i)
}

// Translate returns the Envoy RBAC policies of the AuthorizationPolicy r.
// For action CUSTOM it returns the policies enforced as DENY together with
// an error wrapping ErrCustomUnsupported.
func (t *Translator) Translate(r *policy.Resource) (*Translation, error) {
	if r == nil || r.AuthorizationPolicy == nil {
		return nil, errors.New("rbac: not an AuthorizationPolicy")
	}
	spec := r.AuthorizationPolicy
	out := &Translation{Key: r.Key(), DryRun: r.DryRun()}
	var err error
	switch spec.GetAction() {
	case securityv1.AuthorizationPolicy_ALLOW:
		out.Action = rbacv3.RBAC_ALLOW
	case securityv1.AuthorizationPolicy_DENY:
		out.Action = rbacv3.RBAC_DENY
	case securityv1.AuthorizationPolicy_AUDIT:
		out.Action = rbacv3.RBAC_LOG
	case securityv1.AuthorizationPolicy_CUSTOM:
		out.Action = rbacv3.RBAC_DENY
		err = &policy.Error{Origin: r.Origin, Kind: r.Kind, Namespace: r.Meta.Namespace, Name: r.Meta.Name, Field: "spec.action", Err: ErrCustomUnsupported}
	default:
		return nil, fmt.Errorf("rbac: %s: unknown action %v", r.Key(), spec.GetAction())
	}
	if r.Invalid != nil {
		// The resource is already in its fail-closed form; its problems
		// are reported with it.
		err = r.InvalidError()
	}
	ns, name := r.Meta.Namespace, r.Meta.Name
	if len(spec.GetRules()) == 0 {
		never, nerr := newRule(RuleName(ns, name, 0), matchNever())
		if nerr != nil {
			return nil, fmt.Errorf("rbac: %s: %w", never.Name, nerr)
		}
		out.HTTP = append(out.HTTP, never)
		out.TCP = append(out.TCP, never)
		return out, err
	}
	for i, rule := range spec.GetRules() {
		if rule == nil {
			continue // rejected by validation
		}
		rn := RuleName(ns, name, i)
		g := generator{t: t, ns: ns, action: out.Action}
		p, gerr := g.policy(rule)
		if gerr != nil {
			return nil, fmt.Errorf("rbac: %s: %w", rn, gerr)
		}
		hr, gerr := newRule(rn, p)
		if gerr != nil {
			return nil, fmt.Errorf("rbac: %s: %w", rn, gerr)
		}
		out.HTTP = append(out.HTTP, hr)
		out.Notes = append(out.Notes, regexNotes(rn, p)...)

		g = generator{t: t, ns: ns, action: out.Action, tcp: true}
		p, gerr = g.policy(rule)
		var httpOnly *httpOnlyError
		switch {
		case errors.As(gerr, &httpOnly):
			out.Notes = append(out.Notes, fmt.Sprintf("%s: left out of TCP filters: ALLOW rule uses HTTP-only field %s", rn, httpOnly.field))
		case gerr != nil:
			return nil, fmt.Errorf("rbac: %s: %w", rn, gerr)
		default:
			if len(g.dropped) > 0 {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: HTTP-only fields %s ignored in TCP filters, so the rule matches more connections", rn, strings.Join(g.dropped, ", ")))
			}
			tr, gerr := newRule(rn, p)
			if gerr != nil {
				return nil, fmt.Errorf("rbac: %s: %w", rn, gerr)
			}
			out.TCP = append(out.TCP, tr)
		}
	}
	return out, err
}

// httpOnlyError says an ALLOW rule uses an HTTP-only field and cannot be
// applied to TCP.
type httpOnlyError struct{ field string }

func (e *httpOnlyError) Error() string { return "uses HTTP-only field " + e.field }

// generator builds the Envoy policy of one rule for HTTP or TCP.
type generator struct {
	t      *Translator
	ns     string // the policy's namespace
	action rbacv3.RBAC_Action
	tcp    bool
	// dropped lists the HTTP-only fields left out of a TCP DENY or LOG rule.
	dropped []string
}

// httpOnly decides what to do with an HTTP-only field in the TCP filter:
// an ALLOW rule is dropped whole (so it grants nothing over TCP); a DENY or
// AUDIT rule loses the field and so matches more, never less.
func (g *generator) httpOnly(field string) (skip bool, err error) {
	if !g.tcp {
		return false, nil
	}
	if g.action == rbacv3.RBAC_ALLOW {
		return true, &httpOnlyError{field: field}
	}
	if !slices.Contains(g.dropped, field) {
		g.dropped = append(g.dropped, field)
	}
	return true, nil
}

func (g *generator) policy(rule *securityv1.Rule) (*rbacv3.Policy, error) {
	condPerms, condPrins, err := g.conditions(rule.GetWhen())
	if err != nil {
		return nil, err
	}
	p := &rbacv3.Policy{}
	if len(rule.GetTo()) == 0 {
		p.Permissions = []*rbacv3.Permission{permAnd(condPerms)}
	}
	for _, to := range rule.GetTo() {
		perms, err := g.operation(to.GetOperation())
		if err != nil {
			return nil, err
		}
		p.Permissions = append(p.Permissions, permAnd(append(perms, condPerms...)))
	}
	if len(rule.GetFrom()) == 0 {
		p.Principals = []*rbacv3.Principal{principalAnd(condPrins)}
	}
	for _, from := range rule.GetFrom() {
		prins, err := g.source(from.GetSource())
		if err != nil {
			return nil, err
		}
		p.Principals = append(p.Principals, principalAnd(append(prins, condPrins...)))
	}
	return p, nil
}

// matchers is how the matchers of one kind (permissions or principals)
// combine: OR over several, NOT of one.
type matchers[T any] struct {
	or  func([]T) T
	not func(T) T
}

var (
	permissions = matchers[*rbacv3.Permission]{or: permOr, not: permNot}
	principals  = matchers[*rbacv3.Principal]{or: principalOr, not: principalNot}
)

// fieldStep is one field of a rule: its values and notValues, whether only
// HTTP can match it, and the matchers a value becomes. gen may return
// several matchers for one value (trust-domain aliases); they are ORed.
type fieldStep[T any] struct {
	field       string
	values, not []string
	httpOnly    bool
	gen         func(string) ([]T, error)
}

// addField adds the matchers for one field to out: OR over values, and NOT
// (OR over notValues).
func addField[T any](g *generator, out []T, m matchers[T], f fieldStep[T]) ([]T, error) {
	if len(f.values) == 0 && len(f.not) == 0 {
		return out, nil
	}
	if f.httpOnly {
		if skip, err := g.httpOnly(f.field); skip || err != nil {
			return out, err
		}
	}
	anyOf := func(vs []string) (T, error) {
		ms := make([]T, 0, len(vs))
		for _, v := range vs {
			generated, err := f.gen(v)
			if err != nil {
				var zero T
				return zero, fmt.Errorf("%s: %w", f.field, err)
			}
			ms = append(ms, generated...)
		}
		return m.or(ms), nil
	}
	if len(f.values) > 0 {
		match, err := anyOf(f.values)
		if err != nil {
			return nil, err
		}
		out = append(out, match)
	}
	if len(f.not) > 0 {
		match, err := anyOf(f.not)
		if err != nil {
			return nil, err
		}
		out = append(out, m.not(match))
	}
	return out, nil
}

// addFields is addField for each step in turn.
func addFields[T any](g *generator, m matchers[T], steps []fieldStep[T]) ([]T, error) {
	var out []T
	for _, s := range steps {
		var err error
		if out, err = addField(g, out, m, s); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// single adapts a generator of one matcher a value to fieldStep.gen.
func single[T any](gen func(string) (T, error)) func(string) ([]T, error) {
	return func(v string) ([]T, error) {
		m, err := gen(v)
		if err != nil {
			return nil, err
		}
		return []T{m}, nil
	}
}

func (g *generator) operation(op *securityv1.Operation) ([]*rbacv3.Permission, error) {
	return addFields(g, permissions, []fieldStep[*rbacv3.Permission]{
		{"hosts", op.GetHosts(), op.GetNotHosts(), true, single(genHost)},
		{"ports", op.GetPorts(), op.GetNotPorts(), false, single(genPort)},
		{"methods", op.GetMethods(), op.GetNotMethods(), true, single(genMethod)},
		{"paths", op.GetPaths(), op.GetNotPaths(), true, single(genPath)},
	})
}

func (g *generator) source(src *securityv1.Source) ([]*rbacv3.Principal, error) {
	return addFields(g, principals, []fieldStep[*rbacv3.Principal]{
		{"principals", src.GetPrincipals(), src.GetNotPrincipals(), false, g.t.genPrincipal},
		{"requestPrincipals", src.GetRequestPrincipals(), src.GetNotRequestPrincipals(), true, genRequestPrincipal},
		{"namespaces", src.GetNamespaces(), src.GetNotNamespaces(), false, genNamespace},
		{"serviceAccounts", src.GetServiceAccounts(), src.GetNotServiceAccounts(), false, g.genServiceAccount},
		{"ipBlocks", src.GetIpBlocks(), src.GetNotIpBlocks(), false, genDirectRemoteIP},
		{"remoteIpBlocks", src.GetRemoteIpBlocks(), src.GetNotRemoteIpBlocks(), false, genRemoteIP},
		{"trustDomains", src.GetTrustDomains(), src.GetNotTrustDomains(), false, genTrustDomain},
	})
}

// conditions splits the `when` conditions into the permissions (about the
// destination) and principals (about the source and the request) they
// become. Every condition must hold.
func (g *generator) conditions(when []*securityv1.Condition) ([]*rbacv3.Permission, []*rbacv3.Principal, error) {
	var (
		perms []*rbacv3.Permission
		prins []*rbacv3.Principal
	)
	for _, c := range when {
		key, err := policy.ParseConditionKey(c.GetKey())
		if err != nil {
			return nil, nil, err
		}
		field := "when " + c.GetKey()
		http := key.Attribute.HTTPOnly()
		perm := func(gen func(string) (*rbacv3.Permission, error)) ([]*rbacv3.Permission, error) {
			return addField(g, perms, permissions, fieldStep[*rbacv3.Permission]{field, c.GetValues(), c.GetNotValues(), false, single(gen)})
		}
		switch key.Attribute {
		case policy.AttrDestinationIP:
			perms, err = perm(genDestinationIP)
		case policy.AttrDestinationPort:
			perms, err = perm(genPort)
		case policy.AttrConnectionSNI:
			perms, err = perm(genSNI)
		case policy.AttrExperimentalFilter:
			filter, mdKey := key.Args[0], key.Args[1]
			perms, err = perm(func(v string) (*rbacv3.Permission, error) {
				return genFilterMetadata(filter, mdKey, v), nil
			})
		default:
			var gen func(string) ([]*rbacv3.Principal, error)
			switch key.Attribute {
			case policy.AttrRequestHeaders:
				name := strings.ToLower(key.Args[0])
				gen = func(v string) ([]*rbacv3.Principal, error) {
					return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Header{Header: headerMatcher(name, v, false)}}}, nil
				}
			case policy.AttrSourceIP:
				gen = genDirectRemoteIP
			case policy.AttrRemoteIP:
				gen = genRemoteIP
			case policy.AttrSourceNamespace:
				gen = genNamespace
			case policy.AttrSourcePrincipal:
				gen = g.t.genPrincipal
			case policy.AttrRequestPrincipal:
				gen = genRequestPrincipal
			case policy.AttrRequestAudiences:
				gen = metadataPrincipal(func(v string) *matcherv3.MetadataMatcher { return claimValue([]string{"aud"}, v) })
			case policy.AttrRequestPresenter:
				gen = metadataPrincipal(func(v string) *matcherv3.MetadataMatcher { return claimValue([]string{"azp"}, v) })
			case policy.AttrRequestClaims:
				path := key.Args
				gen = metadataPrincipal(func(v string) *matcherv3.MetadataMatcher { return claimValue(path, v) })
			default:
				return nil, nil, fmt.Errorf("unsupported condition key %q", c.GetKey())
			}
			prins, err = addField(g, prins, principals, fieldStep[*rbacv3.Principal]{field, c.GetValues(), c.GetNotValues(), http, gen})
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return perms, prins, nil
}

// Value generators.

func genHost(v string) (*rbacv3.Permission, error) {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatcher(":authority", v, true)}}, nil
}

func genMethod(v string) (*rbacv3.Permission, error) {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatcher(":method", v, false)}}, nil
}

func genPort(v string) (*rbacv3.Permission, error) {
	port, err := policy.ParsePort(v)
	if err != nil {
		return nil, err
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: port}}, nil
}

func genDestinationIP(v string) (*rbacv3.Permission, error) {
	p, err := policy.ParseCIDR(v)
	if err != nil {
		return nil, err
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidrRange(p)}}, nil
}

func genSNI(v string) (*rbacv3.Permission, error) {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: stringMatcher(v, "", false)}}, nil
}

// genFilterMetadata matches the dynamic metadata key of an Envoy filter
// (experimental.envoy.filters.*): a string value, or with "[v]" a list
// holding v.
func genFilterMetadata(filter, key, v string) *rbacv3.Permission {
	var vm *matcherv3.ValueMatcher
	if inner, ok := policy.ListValue(v); ok {
		vm = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
			MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{
				MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatcher(inner, "", false)}}},
		}}}
	} else {
		vm = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatcher(v, "", false)}}
	}
	m := &matcherv3.MetadataMatcher{Filter: filter, Path: []*matcherv3.MetadataMatcher_PathSegment{
		{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: key}},
	}, Value: vm}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Metadata{Metadata: m}}
}

// uriTemplateExtension is the name Envoy knows the URI template matcher by.
const uriTemplateExtension = "envoy.path.match.uri_template.uri_template_matcher"

func genPath(v string) (*rbacv3.Permission, error) {
	if !policy.IsPathTemplate(v) {
		m := &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: stringMatcher(v, "", false)}}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: m}}, nil
	}
	// Envoy's URI template syntax writes the operators bare: {*} is *, {**} is **.
	tmpl := strings.NewReplacer(policy.MatchAnyTemplate, "**", policy.MatchOneTemplate, "*").Replace(v)
	ut := &uritemplatev3.UriTemplateMatchConfig{PathTemplate: tmpl}
	if err := ut.ValidateAll(); err != nil {
		return nil, fmt.Errorf("path template %q: %w", v, err)
	}
	cfg, err := marshalAny(ut)
	if err != nil {
		return nil, err
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{
		Name: uriTemplateExtension, TypedConfig: cfg,
	}}}, nil
}

// genPrincipal matches the peer's SPIFFE ID: "spiffe://" followed by the
// value, with Istio's wildcards ("*" any non-empty ID, "*x" any ID ending
// in x, "x*" any ID starting with x). Trust-domain aliases are expanded as
// Istio does (see principalVariants).
func (t *Translator) genPrincipal(v string) ([]*rbacv3.Principal, error) {
	var out []*rbacv3.Principal
	for _, p := range t.principalVariants(v) {
		out = append(out, principalAuthenticated(stringMatcher(p, "spiffe://", false)))
	}
	return out, nil
}

// localTrustDomain is the trust domain Istio reads, in a principal, as "the
// mesh's own trust domain, whatever it is".
const localTrustDomain = "cluster.local"

// principalVariants expands a principal over the trust domain bundle with
// Istio's rules. Only a principal of exactly the form
// <td>/ns/<ns>/sa/<sa> (five '/'-separated parts) whose trust domain is not
// "*" is expanded, and only when its trust domain is in the bundle or is
// "cluster.local"; it then becomes one principal per trust domain of the
// bundle (the trust domain replaced, or kept when a "*suffix" trust domain
// already matches it). Any other principal, including one in a foreign
// trust domain or with extra path segments, is matched as written.
func (t *Translator) principalVariants(v string) []string {
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[0] == "*" {
		return []string{v}
	}
	td := parts[0]
	if td != localTrustDomain && !slices.ContainsFunc(t.bundle, func(b string) bool { return trustDomainMatches(td, b) }) {
		return []string{v}
	}
	out := make([]string, 0, len(t.bundle))
	for _, b := range t.bundle {
		p := b + "/" + strings.Join(parts[1:], "/")
		if strings.HasPrefix(td, "*") && strings.HasSuffix(b, td[1:]) {
			p = v
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// trustDomainMatches reports whether td equals the bundle entry b, with the
// wildcards b may hold ("*", "x*", "*x").
func trustDomainMatches(td, b string) bool {
	switch {
	case td == b || b == "*":
		return true
	case strings.HasSuffix(b, "*"):
		return strings.HasPrefix(td, b[:len(b)-1])
	case strings.HasPrefix(b, "*"):
		return strings.HasSuffix(td, b[1:])
	}
	return false
}

// genRequestPrincipal matches "<iss>/<sub>" against the iss and sub
// claims of the verified JWT. The issuer may itself hold '/', so the value
// splits at its last '/'. Wildcards apply to the part they touch: "*"
// matches any issuer and subject, "*/sub" and "*suffix/sub" the issuer,
// "iss/*" and "iss/prefix*" the subject; without a '/', a leading "*" is a
// subject suffix and a trailing one an issuer prefix.
func genRequestPrincipal(v string) ([]*rbacv3.Principal, error) {
	anyValue := regexMatcher(".+")
	exact := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
	}
	idx := strings.LastIndex(v, "/")
	found := idx >= 0
	iss, sub := v, ""
	if found {
		iss, sub = v[:idx], v[idx+1:]
	}
	var mIss, mSub *matcherv3.StringMatcher
	switch {
	case v == "*":
		mIss, mSub = anyValue, anyValue
	case strings.HasPrefix(v, "*") && found:
		if iss == "*" {
			mIss = anyValue
		} else {
			mIss = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: iss[1:]}}
		}
		mSub = exact(sub)
	case strings.HasPrefix(v, "*"):
		mIss = anyValue
		mSub = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*") && found:
		mIss = exact(iss)
		if sub == "*" {
			mSub = anyValue
		} else {
			mSub = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(sub, "*")}}
		}
	case strings.HasSuffix(v, "*"):
		mIss = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}}
		mSub = anyValue
	default:
		mIss, mSub = exact(iss), exact(sub)
	}
	return []*rbacv3.Principal{principalAnd([]*rbacv3.Principal{
		{Identifier: &rbacv3.Principal_Metadata{Metadata: claimString("iss", mIss)}},
		{Identifier: &rbacv3.Principal_Metadata{Metadata: claimString("sub", mSub)}},
	})}, nil
}

func metadataPrincipal(m func(string) *matcherv3.MetadataMatcher) func(string) ([]*rbacv3.Principal, error) {
	return func(v string) ([]*rbacv3.Principal, error) {
		return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Metadata{Metadata: m(v)}}}, nil
	}
}

// genNamespace matches a peer whose ID holds the path segments
// /ns/<namespace>/ anywhere, in any trust domain and whatever segments come
// before or after, as Istio's matcher does; "*" in the value matches any
// characters, '/' included.
func genNamespace(v string) ([]*rbacv3.Principal, error) {
	return []*rbacv3.Principal{principalAuthenticated(regexMatcher(`.*/ns/` + wildcardPattern(v) + `/.*`))}, nil
}

// genServiceAccount matches "<ns>/<sa>" or "<sa>" (in the policy's
// namespace) with Istio's rule: a SPIFFE ID in any trust domain with the
// segments /ns/<ns>/, then optionally more segments, then /sa/<sa>, and
// then either the end or more segments, so .../sa/web/extra matches but
// .../sa/web-x does not.
func (g *generator) genServiceAccount(v string) ([]*rbacv3.Principal, error) {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = g.ns, v
	}
	re := `spiffe://.+/ns/` + regexp.QuoteMeta(ns) + `/(.+/|)sa/` + regexp.QuoteMeta(sa) + `(/.+)?`
	return []*rbacv3.Principal{principalAuthenticated(regexMatcher(re))}, nil
}

// wildcardPattern turns a value whose '*' match any characters into a
// regular expression; every literal part is escaped.
func wildcardPattern(v string) string {
	parts := strings.Split(v, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return strings.Join(parts, ".*")
}

func genTrustDomain(v string) ([]*rbacv3.Principal, error) {
	return []*rbacv3.Principal{principalAuthenticated(regexMatcher(`spiffe://` + segmentPattern(v) + `/.*`))}, nil
}

func genDirectRemoteIP(v string) ([]*rbacv3.Principal, error) {
	p, err := policy.ParseCIDR(v)
	if err != nil {
		return nil, err
	}
	return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrRange(p)}}}, nil
}

func genRemoteIP(v string) ([]*rbacv3.Principal, error) {
	p, err := policy.ParseCIDR(v)
	if err != nil {
		return nil, err
	}
	return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidrRange(p)}}}, nil
}

// ParseRuleName splits a name made by RuleName into the policy's namespace
// and name and the rule index.
func ParseRuleName(s string) (namespace, name string, rule int, ok bool) {
	rest, found := strings.CutPrefix(s, "ns[")
	if !found {
		return "", "", 0, false
	}
	namespace, rest, found = strings.Cut(rest, "]-policy[")
	if !found {
		return "", "", 0, false
	}
	i := strings.LastIndex(rest, "]-rule[")
	if i < 0 || !strings.HasSuffix(rest, "]") {
		return "", "", 0, false
	}
	name = rest[:i]
	n, err := strconv.Atoi(rest[i+len("]-rule[") : len(rest)-1])
	if err != nil || n < 0 {
		return "", "", 0, false
	}
	return namespace, name, n, true
}
