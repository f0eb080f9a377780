package rbac

import (
	"net/netip"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// This file builds the Envoy matchers for Istio's value forms: exact "abc",
// prefix "abc*", suffix "*abc" and presence "*".

// stringMatcher matches v, with prefix prepended to the literal part; "*"
// means any non-empty value.
func stringMatcher(v, prefix string, ignoreCase bool) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(".+")
	case strings.HasPrefix(v, "*"):
		if prefix != "" {
			// A suffix after a fixed prefix: prefix, anything, suffix.
			return regexMatcher(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}, IgnoreCase: ignoreCase}
	case strings.HasSuffix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}, IgnoreCase: ignoreCase}
	default:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: prefix + v}, IgnoreCase: ignoreCase}
	}
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// headerMatcher matches header name against v; "*" means present.
func headerMatcher(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(v, "", ignoreCase)}}
}

// segmentPattern turns a one-segment value with Istio wildcards (a
// namespace, a trust domain) into a regular expression that cannot cross a
// '/': every literal part is escaped.
func segmentPattern(v string) string {
	switch {
	case v == "*":
		return `[^/]+`
	case strings.HasPrefix(v, "*"):
		return `[^/]*` + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		return regexp.QuoteMeta(v[:len(v)-1]) + `[^/]*`
	default:
		return regexp.QuoteMeta(v)
	}
}

func cidrRange(p netip.Prefix) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

// Dynamic metadata written by request authentication, which the generated
// request.auth.* matchers read. The principal ("<iss>/<sub>") and the
// presenter are strings; the audiences and every claim are lists of strings.
const (
	AuthnFilter   = "istio_authn"
	MetaPrincipal = "request.auth.principal"
	MetaAudiences = "request.auth.audiences"
	MetaPresenter = "request.auth.presenter"
	MetaClaims    = "request.auth.claims"
)

func metadataMatcher(path []string, value *matcherv3.ValueMatcher) *matcherv3.MetadataMatcher {
	segs := make([]*matcherv3.MetadataMatcher_PathSegment, len(path))
	for i, k := range path {
		segs[i] = &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}}
	}
	return &matcherv3.MetadataMatcher{Filter: AuthnFilter, Path: segs, Value: value}
}

func metadataString(path []string, v string) *matcherv3.MetadataMatcher {
	return metadataMatcher(path, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatcher(v, "", false)}})
}

func metadataList(path []string, v string) *matcherv3.MetadataMatcher {
	return metadataMatcher(path, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
		MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{
			MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatcher(v, "", false)},
		}},
	}}})
}

// Constructors for permissions and principals.

func permAny() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }

func permAnd(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return permAny()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func permOr(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func permNot(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

func principalAny() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func principalAnd(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return principalAny()
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func principalOr(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func principalNot(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

func principalAuthenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// matchNever is the policy of an AuthorizationPolicy without rules: it
// matches no request, so an ALLOW policy without rules denies everything.
func matchNever() *rbacv3.Policy {
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{permNot(permAny())},
		Principals:  []*rbacv3.Principal{principalNot(principalAny())},
	}
}
