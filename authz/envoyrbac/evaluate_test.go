package envoyrbac_test

import (
	"errors"
	"net/netip"
	"regexp"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	v3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	expr "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/castellan-mesh/castellan/authz/envoyrbac"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func hdr(h *routev3.HeaderMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}

func any() *rbacv3.Principal { return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}} }

// allowIf is an ALLOW filter with one policy: the permission and any
// principal.
func allowIf(t *testing.T, perm *rbacv3.Permission) []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{httpFilter(t, &httprbacv3.RBAC{Rules: &rbacv3.RBAC{
		Action:   rbacv3.RBAC_ALLOW,
		Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{any()}}},
	}})}
}

func allowFrom(t *testing.T, prin *rbacv3.Principal) []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{httpFilter(t, &httprbacv3.RBAC{Rules: &rbacv3.RBAC{
		Action: rbacv3.RBAC_ALLOW,
		Policies: map[string]*rbacv3.Policy{"p": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
			Principals:  []*rbacv3.Principal{prin},
		}},
	}})}
}

func httpFilter(t *testing.T, c *httprbacv3.RBAC) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: envoyrbac.HTTPFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, c)}}
}

func TestMatchers(t *testing.T) {
	present := func(name string, p, invert bool) *rbacv3.Permission {
		return hdr(&routev3.HeaderMatcher{Name: name, InvertMatch: invert, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: p}})
	}
	strHdr := func(name string, m *matcherv3.StringMatcher, invert, missingEmpty bool) *rbacv3.Permission {
		return hdr(&routev3.HeaderMatcher{Name: name, InvertMatch: invert, TreatMissingHeaderAsEmpty: missingEmpty, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}})
	}
	cidr := func(addr string, bits *wrapperspb.UInt32Value) *corev3.CidrRange {
		return &corev3.CidrRange{AddressPrefix: addr, PrefixLen: bits}
	}
	meta := func(path string, v *matcherv3.ValueMatcher, invert bool) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Metadata{Metadata: &matcherv3.MetadataMatcher{
			Filter: "f", Path: []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: path}}},
			Value: v, Invert: invert,
		}}}
	}
	tmpl := func(tpl string) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{
			Name: "t", TypedConfig: mustAny(t, &uritemplatev3.UriTemplateMatchConfig{PathTemplate: tpl}),
		}}}
	}
	md := map[string]*structpb.Struct{"f": {Fields: map[string]*structpb.Value{
		"s":    structpb.NewStringValue("hello"),
		"l":    structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewStringValue("a"), structpb.NewStringValue("b")}}),
		"n":    structpb.NewNumberValue(3),
		"b":    structpb.NewBoolValue(true),
		"null": structpb.NewNullValue(),
	}}}
	base := envoyrbac.Request{
		Headers:         map[string][]string{":path": {"/a/b?x=1"}, "x-multi": {"one", "two"}, "Mixed-Case": {"v"}, "x-n": {"3"}},
		DirectRemoteIP:  netip.MustParseAddr("10.0.0.1"),
		DestinationIP:   netip.MustParseAddr("2001:db8::1"),
		DestinationPort: 443,
		Metadata:        md,
	}
	tests := []struct {
		name string
		perm *rbacv3.Permission
		want bool
	}{
		{"present header", present("x-multi", true, false), true},
		{"header names are case-insensitive", present("mixed-case", true, false), true},
		{"missing header, present_match true", present("x-none", true, false), false},
		{"missing header, present_match false", present("x-none", false, false), true},
		{"missing header, inverted present_match true", present("x-none", true, true), true},
		{"missing header, inverted present_match false", present("x-none", false, true), false},
		{"missing header, string match", strHdr("x-none", exact(""), false, false), false},
		{"missing header, inverted string match", strHdr("x-none", exact("a"), true, false), false},
		{"missing header treated as empty", strHdr("x-none", exact(""), false, true), true},
		{"repeated header values are joined with a comma", strHdr("x-multi", exact("one,two"), false, false), true},
		{"inverted match", strHdr("x-multi", exact("one"), true, false), true},
		{"prefix", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "ONE"}, IgnoreCase: true}, false, false), true},
		{"prefix is case-sensitive by default", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "ONE"}}, false, false), false},
		{"suffix ignore case", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "TWO"}, IgnoreCase: true}, false, false), true},
		{"contains", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "e,t"}}, false, false), true},
		{"regex is a full match", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "one"}}}, false, false), false},
		{"regex full match", strHdr("x-multi", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "o.*o"}}}, false, false), true},
		{"range match", hdr(&routev3.HeaderMatcher{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &v3.Int64Range{Start: 1, End: 5}}}), true},
		{"url path strips the query", &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: exact("/a/b")}}}}, true},
		{"destination port", &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: 443}}, true},
		{"destination port range is half open", &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPortRange{DestinationPortRange: &v3.Int32Range{Start: 400, End: 443}}}, false},
		{"destination ip v6", &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr("2001:db8::", wrapperspb.UInt32(32))}}, true},
		{"destination ip other family", &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr("0.0.0.0", wrapperspb.UInt32(0))}}, false},
		{"destination ip unset prefix length is zero", &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr("::", nil)}}, true},
		{"sni empty", &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: exact("")}}, true},
		{"metadata string", meta("s", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("hello")}}, false), true},
		{"metadata string against a list", meta("l", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("a")}}, false), false},
		{"metadata list one_of", meta("l", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("b")}}}}}}, false), true},
		{"metadata missing", meta("zz", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("")}}, false), false},
		{"metadata missing inverted", meta("zz", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("")}}, true), true},
		{"metadata present", meta("n", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true}}, false), true},
		{"metadata absent is not present", meta("zz", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true}}, false), false},
		{"metadata bool", meta("b", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_BoolMatch{BoolMatch: true}}, false), true},
		{"metadata null", meta("null", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_NullMatch_{NullMatch: &matcherv3.ValueMatcher_NullMatch{}}}, false), true},
		{"metadata double range", meta("n", &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_DoubleMatch{DoubleMatch: &matcherv3.DoubleMatcher{MatchPattern: &matcherv3.DoubleMatcher_Range{Range: &v3.DoubleRange{Start: 1, End: 4}}}}}, false), true},
		{"uri template *", tmpl("/a/*"), true},
		{"uri template /a/b/** needs the slash", tmpl("/a/b/**"), false},
		{"uri template variable", tmpl("/{first}/{second=*}"), true},
		{"and", &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: []*rbacv3.Permission{present("x-multi", true, false), present("x-none", true, false)}}}}, false},
		{"or", &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: []*rbacv3.Permission{present("x-none", true, false), present("x-multi", true, false)}}}}, true},
		{"not", &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: present("x-none", true, false)}}, true},
	}
	ev := envoyrbac.New()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			d, err := ev.EvaluateHTTP(allowIf(t, tt.perm), &r)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tt.want {
				t.Errorf("matched = %v, want %v", d.Allowed, tt.want)
			}
		})
	}
}

func TestPrincipals(t *testing.T) {
	auth := func(m *matcherv3.StringMatcher) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
	}
	cidr := func(s string, n uint32) *corev3.CidrRange {
		return &corev3.CidrRange{AddressPrefix: s, PrefixLen: wrapperspb.UInt32(n)}
	}
	peer := &envoyrbac.Peer{URISANs: []string{"spiffe://td/ns/a/sa/b"}, DNSSANs: []string{"b.a.svc"}, Subject: "CN=b"}
	tests := []struct {
		name string
		prin *rbacv3.Principal
		r    envoyrbac.Request
		want bool
	}{
		{"authenticated without a name matches any TLS peer", auth(nil), envoyrbac.Request{Peer: &envoyrbac.Peer{}}, true},
		{"authenticated needs TLS", auth(nil), envoyrbac.Request{}, false},
		{"URI SAN", auth(exact("spiffe://td/ns/a/sa/b")), envoyrbac.Request{Peer: peer}, true},
		{"DNS SAN", auth(exact("b.a.svc")), envoyrbac.Request{Peer: peer}, true},
		{"subject", auth(exact("CN=b")), envoyrbac.Request{Peer: peer}, true},
		{"no match", auth(exact("spiffe://td/ns/a/sa/c")), envoyrbac.Request{Peer: peer}, false},
		{"direct remote ip", &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.0.0.0", 8)}}, envoyrbac.Request{DirectRemoteIP: netip.MustParseAddr("10.1.2.3"), RemoteIP: netip.MustParseAddr("1.1.1.1")}, true},
		{"remote ip uses the original client", &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("10.0.0.0", 8)}}, envoyrbac.Request{DirectRemoteIP: netip.MustParseAddr("10.1.2.3"), RemoteIP: netip.MustParseAddr("1.1.1.1")}, false},
		{"remote ip defaults to direct", &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("10.0.0.0", 8)}}, envoyrbac.Request{DirectRemoteIP: netip.MustParseAddr("10.1.2.3")}, true},
		{"source ip (deprecated) is the direct address", &rbacv3.Principal{Identifier: &rbacv3.Principal_SourceIp{SourceIp: cidr("10.1.2.3", 32)}}, envoyrbac.Request{DirectRemoteIP: netip.MustParseAddr("10.1.2.3")}, true},
		{"no address never matches", &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("0.0.0.0", 0)}}, envoyrbac.Request{}, false},
		{"not_id", &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: auth(nil)}}, envoyrbac.Request{}, true},
		{"and_ids", &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{any(), auth(nil)}}}}, envoyrbac.Request{}, false},
		{"or_ids", &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{auth(nil), any()}}}}, envoyrbac.Request{}, true},
	}
	ev := envoyrbac.New()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ev.EvaluateHTTP(allowFrom(t, tt.prin), &tt.r)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tt.want {
				t.Errorf("matched = %v, want %v", d.Allowed, tt.want)
			}
		})
	}
}

func TestFilterChain(t *testing.T) {
	pol := func(path string) *rbacv3.Policy {
		return &rbacv3.Policy{
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: exact(path)}}}}},
			Principals:  []*rbacv3.Principal{any()},
		}
	}
	rules := func(a rbacv3.RBAC_Action, names ...string) *rbacv3.RBAC {
		r := &rbacv3.RBAC{Action: a, Policies: map[string]*rbacv3.Policy{}}
		for _, n := range names {
			r.Policies[n] = pol("/" + n)
		}
		return r
	}
	filters := []*hcmv3.HttpFilter{
		{Name: "envoy.filters.http.other"}, // not RBAC: skipped
		httpFilter(t, &httprbacv3.RBAC{Rules: rules(rbacv3.RBAC_LOG, "log")}),
		httpFilter(t, &httprbacv3.RBAC{Rules: rules(rbacv3.RBAC_DENY, "deny"), ShadowRules: rules(rbacv3.RBAC_DENY, "shadow")}),
		httpFilter(t, &httprbacv3.RBAC{Rules: rules(rbacv3.RBAC_ALLOW, "log", "shadow", "allow")}),
		{Name: "disabled", Disabled: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &httprbacv3.RBAC{Rules: rules(rbacv3.RBAC_ALLOW)})}},
	}
	ev := envoyrbac.New()
	check := func(path string, allowed bool, by string, logged int, shadowAllowed bool) {
		t.Helper()
		d, err := ev.EvaluateHTTP(filters, &envoyrbac.Request{Headers: map[string][]string{":path": {path}}})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != allowed || d.Policy != by || len(d.Logged) != logged {
			t.Errorf("%s: got %+v", path, d)
		}
		if s := d.Filters[1].Shadow; s == nil || s.Allowed != shadowAllowed {
			t.Errorf("%s: shadow = %+v, want allowed %v", path, s, shadowAllowed)
		}
	}
	check("/deny", false, "deny", 0, true)
	check("/log", true, "log", 1, true)
	check("/shadow", true, "shadow", 0, false)
	check("/allow", true, "allow", 0, true)
	check("/none", false, "", 0, true)

	// Network filters ignore headers: an HTTP-only permission never matches.
	netFilters := []*listenerv3.Filter{{Name: envoyrbac.NetworkFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &netrbacv3.RBAC{StatPrefix: "tcp.", Rules: rules(rbacv3.RBAC_DENY, "deny")})}}}
	d, err := ev.EvaluateNetwork(netFilters, &envoyrbac.Request{Headers: map[string][]string{":path": {"/deny"}}})
	if err != nil || !d.Allowed {
		t.Errorf("network: %+v %v", d, err)
	}
}

func TestUnsupportedAndInvalid(t *testing.T) {
	ev := envoyrbac.New()
	cel := []*hcmv3.HttpFilter{httpFilter(t, &httprbacv3.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  []*rbacv3.Principal{any()},
		Condition:   &expr.Expr{},
	}}}})}
	if _, err := ev.EvaluateHTTP(cel, &envoyrbac.Request{}); !errors.Is(err, envoyrbac.ErrUnsupported) {
		t.Errorf("CEL condition: err = %v", err)
	}
	// A config Envoy would reject (a policy without principals) is an error.
	invalid := []*hcmv3.HttpFilter{httpFilter(t, &httprbacv3.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
	}}}})}
	if _, err := ev.EvaluateHTTP(invalid, &envoyrbac.Request{}); err == nil {
		t.Error("invalid config evaluated")
	}
}

func TestTemplateRegex(t *testing.T) {
	tests := []struct {
		tmpl    string
		match   []string
		noMatch []string
		bad     bool
	}{
		{tmpl: "/", match: []string{"/"}, noMatch: []string{"/a"}},
		{tmpl: "/foo/*", match: []string{"/foo/bar"}, noMatch: []string{"/foo/bar/baz", "/foo/", "/foo"}},
		{tmpl: "/foo/**", match: []string{"/foo/", "/foo/a/b"}, noMatch: []string{"/foo"}},
		{tmpl: "/foo/**/", match: []string{"/foo/bar/", "/foo//"}, noMatch: []string{"/foo/bar"}},
		{tmpl: "/foo/*/bar/**", match: []string{"/foo/buzz/bar/", "/foo/buzz/bar/baz"}, noMatch: []string{"/foo/a/b/bar/x"}},
		{tmpl: "/a.b/*", match: []string{"/a.b/c"}, noMatch: []string{"/aXb/c"}},
		{tmpl: "/img/*.png", match: []string{"/img/x.png"}, noMatch: []string{"/img/x.jpg"}},
		{tmpl: "/{lang}/{rest=**}", match: []string{"/en/a/b"}, noMatch: []string{"/en"}},
		{tmpl: "/{a=x/*}/y", match: []string{"/x/1/y"}, noMatch: []string{"/z/1/y"}},
		{tmpl: "no-slash", bad: true},
		{tmpl: "/**/a/*", bad: true},
		{tmpl: "/a b", bad: true},
		{tmpl: "//", bad: true},
		{tmpl: "/{a}/{a}", bad: true},
		{tmpl: "/{1a}", bad: true},
		{tmpl: "/*.x/y", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.tmpl, func(t *testing.T) {
			expr, err := envoyrbac.TemplateRegex(tt.tmpl)
			if tt.bad {
				if err == nil {
					t.Fatalf("accepted, regex %q", expr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			re := regexp.MustCompile("^(?:" + expr + ")$")
			for _, p := range tt.match {
				if !re.MatchString(p) {
					t.Errorf("%q does not match %q (regex %q)", tt.tmpl, p, expr)
				}
			}
			for _, p := range tt.noMatch {
				if re.MatchString(p) {
					t.Errorf("%q matches %q (regex %q)", tt.tmpl, p, expr)
				}
			}
		})
	}
}

func FuzzTemplateRegex(f *testing.F) {
	for _, s := range []string{"/foo/*", "/foo/**", "/{a=b/**}", "/x/*.txt", "/a/b/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tmpl string) {
		expr, err := envoyrbac.TemplateRegex(tmpl)
		if err != nil {
			return
		}
		if _, err := regexp.Compile("^(?:" + expr + ")$"); err != nil {
			t.Fatalf("template %q gave invalid regex %q: %v", tmpl, expr, err)
		}
	})
}
