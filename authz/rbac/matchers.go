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

// The request.auth.* attributes and requestPrincipals are read from the
// dynamic metadata of Envoy's JWT filter: a provider configured with
// payload_in_metadata: "payload" stores the verified JWT's payload there, as
// Istio configures it.
const (
	// JWTFilter is the metadata namespace of envoy.filters.http.jwt_authn.
	JWTFilter = "envoy.filters.http.jwt_authn"
	// JWTPayload is the key the JWT payload is stored under.
	JWTPayload = "payload"
)

func metadataMatcher(path []string, value *matcherv3.ValueMatcher) *matcherv3.MetadataMatcher {
	segs := make([]*matcherv3.MetadataMatcher_PathSegment, 0, len(path)+1)
	for _, k := range append([]string{JWTPayload}, path...) {
		segs = append(segs, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}})
	}
	return &matcherv3.MetadataMatcher{Filter: JWTFilter, Path: segs, Value: value}
}

// claimString matches a string claim (iss, sub) of the JWT payload.
func claimString(claim string, m *matcherv3.StringMatcher) *matcherv3.MetadataMatcher {
	return metadataMatcher([]string{claim}, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: m}})
}

// claimValue matches a claim at path that may be a string or a list of
// strings (aud, groups, ...): the string itself or any element of the list.
func claimValue(path []string, v string) *matcherv3.MetadataMatcher {
	str := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatcher(v, "", false)}}
	list := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
		MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: str},
	}}}
	return metadataMatcher(path, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_OrMatch{OrMatch: &matcherv3.OrMatcher{
		ValueMatchers: []*matcherv3.ValueMatcher{str, list},
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
