package envoyrbac

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxDepth bounds the nesting of and/or/not rules the evaluator follows.
const maxDepth = 64

// allOf reports whether every rule matches, as Envoy's and_rules and
// and_ids do: the first rule that does not match, or fails, ends it. An
// empty list matches.
func allOf[R any](rules []R, match func(R) (bool, error)) (bool, error) {
	for _, rule := range rules {
		if ok, err := match(rule); err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// anyOf reports whether some rule matches, as or_rules and or_ids do: the
// first rule that matches, or fails, ends it. An empty list matches
// nothing.
func anyOf[R any](rules []R, match func(R) (bool, error)) (bool, error) {
	for _, rule := range rules {
		if ok, err := match(rule); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func (e *Evaluator) permission(p *rbacv3.Permission, r *Request) (bool, error) {
	return e.permissionAt(p, r, 0)
}

func (e *Evaluator) permissionAt(p *rbacv3.Permission, r *Request, depth int) (bool, error) {
	if depth > maxDepth {
		return false, fmt.Errorf("permission nested more than %d deep", maxDepth)
	}
	sub := func(p *rbacv3.Permission) (bool, error) { return e.permissionAt(p, r, depth+1) }
	switch rule := p.GetRule().(type) {
	case *rbacv3.Permission_AndRules:
		return allOf(rule.AndRules.GetRules(), sub)
	case *rbacv3.Permission_OrRules:
		return anyOf(rule.OrRules.GetRules(), sub)
	case *rbacv3.Permission_NotRule:
		ok, err := sub(rule.NotRule)
		return !ok, err
	case *rbacv3.Permission_Any:
		return rule.Any, nil
	case *rbacv3.Permission_Header:
		return e.header(rule.Header, r)
	case *rbacv3.Permission_UrlPath:
		return e.urlPath(rule.UrlPath, r)
	case *rbacv3.Permission_DestinationIp:
		return cidrContains(rule.DestinationIp, r.DestinationIP)
	case *rbacv3.Permission_DestinationPort:
		return r.DestinationPort == rule.DestinationPort, nil
	case *rbacv3.Permission_DestinationPortRange:
		p := int64(r.DestinationPort)
		return p >= int64(rule.DestinationPortRange.GetStart()) && p < int64(rule.DestinationPortRange.GetEnd()), nil
	case *rbacv3.Permission_Metadata:
		return e.metadata(rule.Metadata, r)
	case *rbacv3.Permission_RequestedServerName:
		return e.str(rule.RequestedServerName, r.RequestedServerName)
	case *rbacv3.Permission_UriTemplate:
		return e.uriTemplate(rule.UriTemplate, r)
	case nil:
		return false, fmt.Errorf("permission with no rule")
	default:
		return false, fmt.Errorf("permission %T: %w", rule, ErrUnsupported)
	}
}

func (e *Evaluator) principal(p *rbacv3.Principal, r *Request) (bool, error) {
	return e.principalAt(p, r, 0)
}

func (e *Evaluator) principalAt(p *rbacv3.Principal, r *Request, depth int) (bool, error) {
	if depth > maxDepth {
		return false, fmt.Errorf("principal nested more than %d deep", maxDepth)
	}
	sub := func(p *rbacv3.Principal) (bool, error) { return e.principalAt(p, r, depth+1) }
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_AndIds:
		return allOf(id.AndIds.GetIds(), sub)
	case *rbacv3.Principal_OrIds:
		return anyOf(id.OrIds.GetIds(), sub)
	case *rbacv3.Principal_NotId:
		ok, err := sub(id.NotId)
		return !ok, err
	case *rbacv3.Principal_Any:
		return id.Any, nil
	case *rbacv3.Principal_Authenticated_:
		return e.authenticated(id.Authenticated, r)
	case *rbacv3.Principal_SourceIp:
		// Deprecated in Envoy: the downstream connection's remote address.
		return cidrContains(id.SourceIp, r.DirectRemoteIP)
	case *rbacv3.Principal_DirectRemoteIp:
		return cidrContains(id.DirectRemoteIp, r.DirectRemoteIP)
	case *rbacv3.Principal_RemoteIp:
		return cidrContains(id.RemoteIp, r.remoteIP())
	case *rbacv3.Principal_Header:
		return e.header(id.Header, r)
	case *rbacv3.Principal_UrlPath:
		return e.urlPath(id.UrlPath, r)
	case *rbacv3.Principal_Metadata:
		return e.metadata(id.Metadata, r)
	case nil:
		return false, fmt.Errorf("principal with no identifier")
	default:
		return false, fmt.Errorf("principal %T: %w", id, ErrUnsupported)
	}
}

// authenticated matches as Envoy does: only a TLS connection can match;
// without principal_name any TLS peer matches; otherwise the URI SANs, then
// the DNS SANs, then the subject are tried.
func (e *Evaluator) authenticated(a *rbacv3.Principal_Authenticated, r *Request) (bool, error) {
	if r.Peer == nil {
		return false, nil
	}
	m := a.GetPrincipalName()
	if m == nil {
		return true, nil
	}
	for _, names := range [][]string{r.Peer.URISANs, r.Peer.DNSSANs} {
		for _, n := range names {
			if ok, err := e.str(m, n); err != nil || ok {
				return ok, err
			}
		}
	}
	return e.str(m, r.Peer.Subject)
}

// header matches as Envoy's HeaderUtility does: the values of a repeated
// header are joined with ","; a missing header matches only an inverted
// present_match: true or a present_match: false (unless
// treat_missing_header_as_empty is set).
func (e *Evaluator) header(h *routev3.HeaderMatcher, r *Request) (bool, error) {
	v, present := r.header(h.GetName())
	if !present && !h.GetTreatMissingHeaderAsEmpty() {
		pm, isPresent := h.GetHeaderMatchSpecifier().(*routev3.HeaderMatcher_PresentMatch)
		if h.GetInvertMatch() {
			return isPresent && pm.PresentMatch, nil
		}
		return isPresent && !pm.PresentMatch, nil
	}
	var (
		match bool
		err   error
	)
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		match = present // no specifier: presence
	case *routev3.HeaderMatcher_ExactMatch:
		match = v == s.ExactMatch
	case *routev3.HeaderMatcher_SafeRegexMatch:
		match, err = e.regex(s.SafeRegexMatch, v)
	case *routev3.HeaderMatcher_RangeMatch:
		n, perr := strconv.ParseInt(v, 10, 64)
		match = perr == nil && n >= s.RangeMatch.GetStart() && n < s.RangeMatch.GetEnd()
	case *routev3.HeaderMatcher_PresentMatch:
		match = present == s.PresentMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		match = strings.HasPrefix(v, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		match = strings.HasSuffix(v, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		match = strings.Contains(v, s.ContainsMatch)
	case *routev3.HeaderMatcher_StringMatch:
		match, err = e.str(s.StringMatch, v)
	default:
		return false, fmt.Errorf("header matcher %T: %w", s, ErrUnsupported)
	}
	if err != nil {
		return false, err
	}
	return match != h.GetInvertMatch(), nil
}

func (e *Evaluator) urlPath(m *matcherv3.PathMatcher, r *Request) (bool, error) {
	p, ok := r.path()
	if !ok {
		return false, nil
	}
	sm := m.GetPath()
	if sm == nil {
		return false, fmt.Errorf("path matcher without a path: %w", ErrUnsupported)
	}
	return e.str(sm, p)
}

// str evaluates a StringMatcher.
func (e *Evaluator) str(m *matcherv3.StringMatcher, v string) (bool, error) {
	ic := m.GetIgnoreCase()
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		if ic {
			return strings.EqualFold(v, p.Exact), nil
		}
		return v == p.Exact, nil
	case *matcherv3.StringMatcher_Prefix:
		if ic {
			return len(v) >= len(p.Prefix) && strings.EqualFold(v[:len(p.Prefix)], p.Prefix), nil
		}
		return strings.HasPrefix(v, p.Prefix), nil
	case *matcherv3.StringMatcher_Suffix:
		if ic {
			return len(v) >= len(p.Suffix) && strings.EqualFold(v[len(v)-len(p.Suffix):], p.Suffix), nil
		}
		return strings.HasSuffix(v, p.Suffix), nil
	case *matcherv3.StringMatcher_Contains:
		if ic {
			return strings.Contains(strings.ToLower(v), strings.ToLower(p.Contains)), nil
		}
		return strings.Contains(v, p.Contains), nil
	case *matcherv3.StringMatcher_SafeRegex:
		return e.regex(p.SafeRegex, v)
	default:
		return false, fmt.Errorf("string matcher %T: %w", p, ErrUnsupported)
	}
}

// regex is a full match, as Envoy's RE2 matchers are.
func (e *Evaluator) regex(m *matcherv3.RegexMatcher, v string) (bool, error) {
	re, err := e.regexp(m.GetRegex())
	if err != nil {
		return false, err
	}
	return re.MatchString(v), nil
}

// cidrContains matches an address against a CIDR range; an address of the
// other family, or no address, never matches.
func cidrContains(c *corev3.CidrRange, a netip.Addr) (bool, error) {
	base, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return false, fmt.Errorf("invalid CIDR address %q", c.GetAddressPrefix())
	}
	bits := int(c.GetPrefixLen().GetValue())
	if bits > base.BitLen() {
		return false, fmt.Errorf("invalid CIDR prefix length %d for %s", bits, base)
	}
	if !a.IsValid() || a.Is4() != base.Is4() {
		return false, nil
	}
	p, err := base.Prefix(bits)
	if err != nil {
		return false, err
	}
	return p.Contains(a.WithZone("")), nil
}

// metadata evaluates a MetadataMatcher against the dynamic metadata.
func (e *Evaluator) metadata(m *matcherv3.MetadataMatcher, r *Request) (bool, error) {
	v := lookupMetadata(r.Metadata[m.GetFilter()], m.GetPath())
	ok, err := e.value(m.GetValue(), v, 0)
	if err != nil {
		return false, err
	}
	return ok != m.GetInvert(), nil
}

// lookupMetadata walks path through s; nil when any key is missing.
func lookupMetadata(s *structpb.Struct, path []*matcherv3.MetadataMatcher_PathSegment) *structpb.Value {
	if s == nil || len(path) == 0 {
		return nil
	}
	cur := structpb.NewStructValue(s)
	for _, seg := range path {
		st := cur.GetStructValue()
		if st == nil {
			return nil
		}
		next, ok := st.GetFields()[seg.GetKey()]
		if !ok {
			return nil
		}
		cur = next
	}
	return cur
}

// value evaluates a ValueMatcher; v is nil for a missing value.
func (e *Evaluator) value(m *matcherv3.ValueMatcher, v *structpb.Value, depth int) (bool, error) {
	if depth > maxDepth {
		return false, fmt.Errorf("value matcher nested more than %d deep", maxDepth)
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_NullMatch_:
		_, isNull := v.GetKind().(*structpb.Value_NullValue)
		return isNull, nil
	case *matcherv3.ValueMatcher_DoubleMatch:
		n, isNum := v.GetKind().(*structpb.Value_NumberValue)
		if !isNum {
			return false, nil
		}
		switch dm := p.DoubleMatch.GetMatchPattern().(type) {
		case *matcherv3.DoubleMatcher_Exact:
			return n.NumberValue == dm.Exact, nil
		case *matcherv3.DoubleMatcher_Range:
			return n.NumberValue >= dm.Range.GetStart() && n.NumberValue < dm.Range.GetEnd(), nil
		}
		return false, fmt.Errorf("double matcher %T: %w", p.DoubleMatch.GetMatchPattern(), ErrUnsupported)
	case *matcherv3.ValueMatcher_StringMatch:
		s, isStr := v.GetKind().(*structpb.Value_StringValue)
		if !isStr {
			return false, nil
		}
		return e.str(p.StringMatch, s.StringValue)
	case *matcherv3.ValueMatcher_BoolMatch:
		b, isBool := v.GetKind().(*structpb.Value_BoolValue)
		return isBool && b.BoolValue == p.BoolMatch, nil
	case *matcherv3.ValueMatcher_PresentMatch:
		return p.PresentMatch && v != nil && v.GetKind() != nil, nil
	case *matcherv3.ValueMatcher_ListMatch:
		l, isList := v.GetKind().(*structpb.Value_ListValue)
		if !isList {
			return false, nil
		}
		one := p.ListMatch.GetOneOf()
		if one == nil {
			return false, fmt.Errorf("list matcher without one_of: %w", ErrUnsupported)
		}
		for _, item := range l.ListValue.GetValues() {
			if ok, err := e.value(one, item, depth+1); err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *matcherv3.ValueMatcher_OrMatch:
		for _, sub := range p.OrMatch.GetValueMatchers() {
			if ok, err := e.value(sub, v, depth+1); err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	default:
		return false, fmt.Errorf("value matcher %T: %w", p, ErrUnsupported)
	}
}

// uriTemplate matches the request path (without query and fragment)
// against an Envoy URI template.
func (e *Evaluator) uriTemplate(c *corev3.TypedExtensionConfig, r *Request) (bool, error) {
	var cfg uritemplatev3.UriTemplateMatchConfig
	if err := unpack(c.GetTypedConfig(), &cfg); err != nil {
		return false, fmt.Errorf("uri_template: %w", err)
	}
	expr, err := TemplateRegex(cfg.GetPathTemplate())
	if err != nil {
		return false, err
	}
	re, err := e.regexp(expr)
	if err != nil {
		return false, err
	}
	p, ok := r.path()
	if !ok {
		return false, nil
	}
	return re.MatchString(p), nil
}
