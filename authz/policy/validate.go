package policy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	securityv1 "istio.io/api/security/v1"
	typev1beta1 "istio.io/api/type/v1beta1"

	"github.com/castellan-mesh/castellan/internal/clip"
)

// maxRules is the most rules one AuthorizationPolicy may hold, as in the
// Istio CRD.
const maxRules = 512

var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelName    = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
)

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func validateMeta(m *Meta, path string, fe *fieldErrors) {
	switch {
	case m.Name == "":
		fe.add(path+".name", "missing name")
	case len(m.Name) > 253 || !dnsSubdomain.MatchString(m.Name):
		fe.add(path+".name", "%q is not a valid name (lower-case letters, digits, '-' and '.')", clip.String(m.Name, 64))
	}
	if len(m.Namespace) > 63 || !dnsLabel.MatchString(m.Namespace) {
		fe.add(path+".namespace", "%q is not a valid namespace (lower-case letters, digits and '-')", clip.String(m.Namespace, 64))
	}
	if v, ok := m.Annotations[DryRunAnnotation]; ok {
		if _, err := strconv.ParseBool(v); err != nil {
			fe.add(path+".annotations["+DryRunAnnotation+"]", "%q is not true or false", clip.String(v, 40))
		}
	}
}

func validateSelector(s *typev1beta1.WorkloadSelector, path string, fe *fieldErrors) {
	for _, k := range sortedKeys(s.GetMatchLabels()) {
		if err := checkLabelKey(k); err != nil {
			fe.add(path+".matchLabels["+k+"]", "invalid label key: %v", err)
		}
		if v := s.MatchLabels[k]; v != "" && (len(v) > 63 || !labelName.MatchString(v)) {
			fe.add(path+".matchLabels["+k+"]", "invalid label value %q", clip.String(v, 64))
		}
	}
}

func checkLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	switch {
	case hasPrefix && (prefix == "" || len(prefix) > 253 || !dnsSubdomain.MatchString(prefix)):
		return fmt.Errorf("prefix %q is not a DNS subdomain", clip.String(prefix, 64))
	case name == "" || len(name) > 63 || !labelName.MatchString(name):
		return fmt.Errorf("name %q must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", clip.String(name, 64))
	}
	return nil
}

// targetKinds lists the targetRef kinds Istio supports, with their groups.
var targetKinds = map[string][]string{
	"Gateway":      {"gateway.networking.k8s.io"},
	"GatewayClass": {"gateway.networking.k8s.io"},
	"Service":      {"", "core"},
	"ServiceEntry": {"networking.istio.io"},
}

func validateTargetRef(ref *typev1beta1.PolicyTargetReference, ns, path string, fe *fieldErrors) {
	if ref == nil {
		fe.add(path, "must not be null")
		return
	}
	groups, ok := targetKinds[ref.GetKind()]
	switch {
	case !ok:
		fe.add(path+".kind", "unsupported kind %q (want Gateway, GatewayClass, Service or ServiceEntry)", clip.String(ref.GetKind(), 64))
	case !slices.Contains(groups, ref.GetGroup()):
		fe.add(path+".group", "kind %s needs group %q, got %q", ref.GetKind(), groups[len(groups)-1], clip.String(ref.GetGroup(), 64))
	}
	if ref.GetName() == "" {
		fe.add(path+".name", "missing name")
	}
	if ref.GetNamespace() != "" && ref.GetNamespace() != ns {
		fe.add(path+".namespace", "cross-namespace reference to %q is not supported", clip.String(ref.GetNamespace(), 64))
	}
}

func validateAuthorizationPolicy(p *securityv1.AuthorizationPolicy, ns, path string, fe *fieldErrors) {
	hasTargets := p.GetTargetRef() != nil || len(p.GetTargetRefs()) > 0
	if p.GetSelector() != nil && hasTargets {
		fe.add(path, "only one of selector, targetRef and targetRefs can be set")
	}
	if p.GetTargetRef() != nil && len(p.GetTargetRefs()) > 0 {
		fe.add(path, "only one of targetRef and targetRefs can be set")
	}
	if s := p.GetSelector(); s != nil {
		validateSelector(s, path+".selector", fe)
	}
	if p.GetTargetRef() != nil {
		validateTargetRef(p.GetTargetRef(), ns, path+".targetRef", fe)
	}
	for i, ref := range p.GetTargetRefs() {
		validateTargetRef(ref, ns, fmt.Sprintf("%s.targetRefs[%d]", path, i), fe)
	}
	if p.GetProvider() != nil && p.GetAction() != securityv1.AuthorizationPolicy_CUSTOM {
		fe.add(path+".provider", "is only valid with action CUSTOM")
	}
	if len(p.GetRules()) > maxRules {
		fe.add(path+".rules", "has %d rules, more than the limit of %d", len(p.GetRules()), maxRules)
		return
	}
	for i, rule := range p.GetRules() {
		rp := fmt.Sprintf("%s.rules[%d]", path, i)
		if rule == nil {
			fe.add(rp, "must not be null")
			continue
		}
		for j, from := range rule.GetFrom() {
			validateSource(from.GetSource(), fmt.Sprintf("%s.from[%d].source", rp, j), fe)
		}
		for j, to := range rule.GetTo() {
			validateOperation(to.GetOperation(), fmt.Sprintf("%s.to[%d].operation", rp, j), fe)
		}
		for j, c := range rule.GetWhen() {
			validateCondition(c, fmt.Sprintf("%s.when[%d]", rp, j), fe)
		}
	}
}

func validateSource(s *securityv1.Source, path string, fe *fieldErrors) {
	if s == nil {
		fe.add(path, "must be set")
		return
	}
	checkFields(path, fe, []valueList{
		{"principals", s.Principals, checkPrincipal},
		{"notPrincipals", s.NotPrincipals, checkPrincipal},
		{"requestPrincipals", s.RequestPrincipals, checkWildcard},
		{"notRequestPrincipals", s.NotRequestPrincipals, checkWildcard},
		{"namespaces", s.Namespaces, checkNamespacePattern},
		{"notNamespaces", s.NotNamespaces, checkNamespacePattern},
		{"serviceAccounts", s.ServiceAccounts, checkServiceAccount},
		{"notServiceAccounts", s.NotServiceAccounts, checkServiceAccount},
		{"ipBlocks", s.IpBlocks, checkCIDR},
		{"notIpBlocks", s.NotIpBlocks, checkCIDR},
		{"remoteIpBlocks", s.RemoteIpBlocks, checkCIDR},
		{"notRemoteIpBlocks", s.NotRemoteIpBlocks, checkCIDR},
		{"trustDomains", s.TrustDomains, checkTrustDomainPattern},
		{"notTrustDomains", s.NotTrustDomains, checkTrustDomainPattern},
	})
	if (len(s.ServiceAccounts) > 0 || len(s.NotServiceAccounts) > 0) &&
		(len(s.Principals) > 0 || len(s.NotPrincipals) > 0 || len(s.Namespaces) > 0 || len(s.NotNamespaces) > 0) {
		fe.add(path, "serviceAccounts cannot be set with principals or namespaces")
	}
}

func validateOperation(o *securityv1.Operation, path string, fe *fieldErrors) {
	if o == nil {
		fe.add(path, "must be set")
		return
	}
	checkFields(path, fe, []valueList{
		{"hosts", o.Hosts, checkWildcard},
		{"notHosts", o.NotHosts, checkWildcard},
		{"ports", o.Ports, checkPort},
		{"notPorts", o.NotPorts, checkPort},
		{"methods", o.Methods, checkWildcard},
		{"notMethods", o.NotMethods, checkWildcard},
		{"paths", o.Paths, checkPath},
		{"notPaths", o.NotPaths, checkPath},
	})
}

// valueList is one list field of a source or an operation, and the check
// each of its values must pass.
type valueList struct {
	name   string
	values []string
	check  func(string) error
}

// checkFields checks the values of each list field of the source or
// operation at path, and that at least one of them is set.
func checkFields(path string, fe *fieldErrors, lists []valueList) {
	empty := true
	for _, l := range lists {
		if len(l.values) > 0 {
			empty = false
		}
		checkValues(l.values, l.check, path+"."+l.name, fe)
	}
	if empty {
		fe.add(path, "must not be empty (set at least one field)")
	}
}

func validateCondition(c *securityv1.Condition, path string, fe *fieldErrors) {
	if c == nil {
		fe.add(path, "must not be null")
		return
	}
	if c.GetKey() == "" {
		fe.add(path+".key", "missing key")
		return
	}
	key, err := ParseConditionKey(c.GetKey())
	if err != nil {
		fe.add(path+".key", "%v", err)
		return
	}
	if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
		fe.add(path, "at least one of values and notValues must be set for key %s", c.GetKey())
	}
	check := checkWildcard
	switch key.Attribute {
	case AttrSourceIP, AttrRemoteIP, AttrDestinationIP:
		check = checkCIDR
	case AttrDestinationPort:
		check = checkPort
	case AttrSourcePrincipal:
		check = checkPrincipal
	case AttrSourceNamespace:
		check = checkNamespacePattern
	case AttrExperimentalFilter:
		check = checkMetadataValue
	}
	checkValues(c.GetValues(), check, path+".values", fe)
	checkValues(c.GetNotValues(), check, path+".notValues", fe)
}

// maxValueLength bounds one string value; longer ones are hostile.
const maxValueLength = 4096

func checkValues(values []string, check func(string) error, path string, fe *fieldErrors) {
	for i, v := range values {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case v == "":
			fe.add(p, "empty value")
		case len(v) > maxValueLength:
			fe.add(p, "value is %d bytes, more than the limit of %d", len(v), maxValueLength)
		default:
			if err := check(v); err != nil {
				fe.add(p, "%v", err)
			}
		}
	}
}

// checkWildcard accepts exact values, "*", a prefix match "abc*" and a
// suffix match "*abc". A "*" anywhere else ("a*b", "**") is an error.
func checkWildcard(v string) error {
	if v == "*" {
		return nil
	}
	n := strings.Count(v, "*")
	switch {
	case n == 0:
		return nil
	case n == 1 && (strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*")):
		return nil
	}
	return fmt.Errorf("bad wildcard in %q: \"*\" may only be the whole value, its first character or its last", clip.String(v, 64))
}

// checkMetadataValue accepts a value of an experimental.envoy.filters key:
// a string with Istio's wildcards, or "[v]" for a list element.
func checkMetadataValue(v string) error {
	if inner, ok := ListValue(v); ok {
		if inner == "" {
			return fmt.Errorf("empty list value %q", clip.String(v, 64))
		}
		return checkWildcard(inner)
	}
	return checkWildcard(v)
}

// ListValue reports whether a value of an experimental.envoy.filters key is
// written "[v]", matching a list that holds v, and returns v.
func ListValue(v string) (string, bool) {
	if len(v) >= 2 && strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		return v[1 : len(v)-1], true
	}
	return "", false
}

// checkPrincipal accepts what Istio accepts. A principal is written
// without "spiffe://" (<trust-domain>/ns/<namespace>/sa/<service-account>),
// and the prefix is added when it is matched; a principal written with it
// is accepted all the same and, as in Istio, matches no peer
// ("spiffe://spiffe://...").
func checkPrincipal(v string) error {
	return checkWildcard(v)
}

func checkNamespacePattern(v string) error {
	if strings.Contains(v, "/") {
		return fmt.Errorf("namespace %q must not contain '/'", clip.String(v, 64))
	}
	return checkWildcard(v)
}

func checkTrustDomainPattern(v string) error {
	if strings.Contains(v, "/") {
		return fmt.Errorf("trust domain %q must not contain '/'", clip.String(v, 64))
	}
	return checkWildcard(v)
}

func checkServiceAccount(v string) error {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = "", ns
	}
	switch {
	case strings.Contains(v, "*"):
		return fmt.Errorf("service account %q: wildcards are not allowed", clip.String(v, 64))
	case ok && !dnsLabel.MatchString(ns):
		return fmt.Errorf("service account %q: %q is not a valid namespace", clip.String(v, 64), clip.String(ns, 64))
	case !dnsSubdomain.MatchString(sa):
		return fmt.Errorf("service account %q: %q is not a valid service account name", clip.String(v, 64), clip.String(sa, 64))
	}
	return nil
}

func checkCIDR(v string) error {
	_, err := ParseCIDR(v)
	return err
}

func checkPort(v string) error {
	_, err := ParsePort(v)
	return err
}

// ParseCIDR parses an IP block as policies write it: a single address
// ("203.0.113.4") or a CIDR ("203.0.113.0/24"). The result is masked to its
// prefix length.
func ParseCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "%") {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: zones are not allowed", clip.String(v, 64))
	}
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", clip.String(v, 64))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid IP address or CIDR %q", clip.String(v, 64))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParsePort parses a port number from 1 to 65535.
func ParsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q (want a number from 1 to 65535)", clip.String(v, 64))
	}
	return uint32(n), nil
}

// Path template operators.
const (
	MatchOneTemplate = "{*}"
	MatchAnyTemplate = "{**}"
)

// IsPathTemplate reports whether a path value uses the {*} or {**}
// template operators, which are matched as an Envoy URI template.
func IsPathTemplate(p string) bool {
	return strings.Contains(p, MatchOneTemplate) || strings.Contains(p, MatchAnyTemplate)
}

// pathLiteral is the set of characters Envoy allows in a literal segment of
// a URI template: RFC 3986 pchar without '*'.
var pathLiteral = regexp.MustCompile(`^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$`)

func checkPath(p string) error {
	if !IsPathTemplate(p) {
		if strings.ContainsAny(p, "{}") {
			return fmt.Errorf("invalid path %q: '{' and '}' are only allowed in the {*} and {**} template operators", clip.String(p, 64))
		}
		return checkWildcard(p)
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("invalid path template %q: must start with '/'", clip.String(p, 64))
	}
	seenAny := false
	for _, seg := range strings.Split(strings.Trim(p, "/"), "/") {
		switch {
		case (seg == MatchOneTemplate || seg == MatchAnyTemplate) && seenAny:
			return fmt.Errorf("invalid path template %q: {**} must be the last operator", clip.String(p, 64))
		case seg == MatchAnyTemplate:
			seenAny = true
		case seg == MatchOneTemplate:
		case strings.ContainsAny(seg, "{}*"):
			return fmt.Errorf("invalid path template %q: segment %q mixes an operator with other characters", clip.String(p, 64), clip.String(seg, 64))
		case !pathLiteral.MatchString(seg):
			return fmt.Errorf("invalid path template %q: segment %q has characters not allowed in a path", clip.String(p, 64), clip.String(seg, 64))
		}
	}
	return nil
}

// Attribute names a request attribute a `when` condition can test.
type Attribute string

// The attributes a `when` condition can test.
const (
	AttrRequestHeaders   Attribute = "request.headers"
	AttrSourceIP         Attribute = "source.ip"
	AttrRemoteIP         Attribute = "remote.ip"
	AttrSourceNamespace  Attribute = "source.namespace"
	AttrSourcePrincipal  Attribute = "source.principal"
	AttrRequestPrincipal Attribute = "request.auth.principal"
	AttrRequestAudiences Attribute = "request.auth.audiences"
	AttrRequestPresenter Attribute = "request.auth.presenter"
	AttrRequestClaims    Attribute = "request.auth.claims"
	AttrDestinationIP    Attribute = "destination.ip"
	AttrDestinationPort  Attribute = "destination.port"
	AttrConnectionSNI    Attribute = "connection.sni"
	// AttrExperimentalFilter is Istio's experimental.envoy.filters.<name>[<key>]:
	// the dynamic metadata an Envoy filter sets, matched as a string, or as
	// a list when the value is written "[v]".
	AttrExperimentalFilter Attribute = "experimental.envoy.filters"
)

// experimentalPrefix starts an AttrExperimentalFilter key.
const experimentalPrefix = "experimental.envoy.filters."

// filterName is an Envoy filter name after "envoy.filters.".
var filterName = regexp.MustCompile(`^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$`)

// HTTPOnly reports whether the attribute exists only for HTTP requests.
func (a Attribute) HTTPOnly() bool {
	return a == AttrRequestHeaders || strings.HasPrefix(string(a), "request.auth.")
}

// ConditionKey is a parsed `when` key.
type ConditionKey struct {
	Attribute Attribute
	// Args holds the bracketed names: the header name of
	// request.headers[name], or the claim path of request.auth.claims[a][b];
	// for AttrExperimentalFilter, the filter name ("envoy.filters.a.b") and
	// the metadata key.
	Args []string
}

// ParseConditionKey parses a `when` key such as "request.headers[x-user]"
// or "request.auth.claims[groups]".
func ParseConditionKey(key string) (ConditionKey, error) {
	switch Attribute(key) {
	case AttrSourceIP, AttrRemoteIP, AttrSourceNamespace, AttrSourcePrincipal,
		AttrRequestPrincipal, AttrRequestAudiences, AttrRequestPresenter,
		AttrDestinationIP, AttrDestinationPort, AttrConnectionSNI:
		return ConditionKey{Attribute: Attribute(key)}, nil
	}
	switch {
	case strings.HasPrefix(key, string(AttrRequestHeaders)+"["):
		names, err := bracketed(strings.TrimPrefix(key, string(AttrRequestHeaders)))
		if err != nil || len(names) != 1 {
			return ConditionKey{}, fmt.Errorf("malformed header key %q: want request.headers[<name>]", clip.String(key, 64))
		}
		if !validHeaderName(names[0]) {
			return ConditionKey{}, fmt.Errorf("malformed header key %q: %q is not a valid HTTP header name", clip.String(key, 64), clip.String(names[0], 64))
		}
		return ConditionKey{Attribute: AttrRequestHeaders, Args: names}, nil
	case strings.HasPrefix(key, string(AttrRequestClaims)+"["):
		names, err := bracketed(strings.TrimPrefix(key, string(AttrRequestClaims)))
		if err != nil {
			return ConditionKey{}, fmt.Errorf("malformed claim key %q: want request.auth.claims[<name>] or request.auth.claims[<a>][<b>]", clip.String(key, 64))
		}
		return ConditionKey{Attribute: AttrRequestClaims, Args: names}, nil
	case strings.HasPrefix(key, experimentalPrefix):
		filter, rest, ok := strings.Cut(strings.TrimPrefix(key, experimentalPrefix), "[")
		name, closed := strings.CutSuffix(rest, "]")
		if !ok || !closed || name == "" || !filterName.MatchString(filter) {
			return ConditionKey{}, fmt.Errorf("malformed key %q: want experimental.envoy.filters.<filter>[<metadata key>]", clip.String(key, 64))
		}
		return ConditionKey{Attribute: AttrExperimentalFilter, Args: []string{"envoy.filters." + filter, name}}, nil
	case key == string(AttrRequestHeaders) || key == string(AttrRequestClaims):
		return ConditionKey{}, fmt.Errorf("malformed key %q: want %s[<name>]", key, key)
	}
	return ConditionKey{}, fmt.Errorf("unknown attribute %q", clip.String(key, 64))
}

// bracketed parses "[a][b]..." into its names. Names are non-empty and hold
// no brackets.
func bracketed(s string) ([]string, error) {
	var names []string
	for s != "" {
		if s[0] != '[' {
			return nil, errors.New("want '['")
		}
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return nil, errors.New("missing ']'")
		}
		name := s[1:end]
		if name == "" || strings.ContainsAny(name, "[") {
			return nil, errors.New("bad name")
		}
		names = append(names, name)
		s = s[end+1:]
	}
	if len(names) == 0 {
		return nil, errors.New("no name")
	}
	return names, nil
}

// validHeaderName reports whether n is an RFC 9110 field name (a token), or
// an HTTP/2 pseudo-header such as ":authority".
func validHeaderName(n string) bool {
	n = strings.TrimPrefix(n, ":")
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func validatePeerAuthentication(p *securityv1.PeerAuthentication, path string, fe *fieldErrors) {
	if s := p.GetSelector(); s != nil {
		validateSelector(s, path+".selector", fe)
	}
	if len(p.GetPortLevelMtls()) > 0 && len(p.GetSelector().GetMatchLabels()) == 0 {
		fe.add(path+".portLevelMtls", "needs a workload selector: a namespace or mesh policy cannot set port-level mTLS")
	}
	for _, port := range slices.Sorted(maps.Keys(p.GetPortLevelMtls())) {
		pp := fmt.Sprintf("%s.portLevelMtls[%d]", path, port)
		if port < 1 || port > 65535 {
			fe.add(pp, "invalid port %d (want a number from 1 to 65535)", port)
		}
		if p.PortLevelMtls[port] == nil {
			fe.add(pp, "must not be null")
		}
	}
}
