package envoyrbac

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy's names for the RBAC filters.
const (
	HTTPFilterName    = "envoy.filters.http.rbac"
	NetworkFilterName = "envoy.filters.network.rbac"
)

// ErrUnsupported is wrapped by errors for configuration this evaluator does
// not implement (CEL conditions, the generic matcher API, custom
// principals). It never guesses an answer for them.
var ErrUnsupported = errors.New("unsupported by the evaluator")

// Evaluator evaluates RBAC filters. It caches compiled regular expressions
// and is safe for concurrent use. The zero value is not usable; call New.
type Evaluator struct {
	mu      sync.Mutex
	regexes map[string]*regexp.Regexp
}

// New returns an Evaluator.
func New() *Evaluator {
	return &Evaluator{regexes: map[string]*regexp.Regexp{}}
}

// maxCachedRegexes bounds the cache; past it, it is cleared.
const maxCachedRegexes = 10000

func (e *Evaluator) regexp(expr string) (*regexp.Regexp, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if re, ok := e.regexes[expr]; ok {
		return re, nil
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("envoyrbac: invalid regex %q: %w", expr, err)
	}
	if len(e.regexes) >= maxCachedRegexes {
		clear(e.regexes)
	}
	e.regexes[expr] = re
	return re, nil
}

// FilterResult is what one RBAC filter did with a request.
type FilterResult struct {
	// Index is the filter's position in the list given to Evaluate.
	Index int
	Name  string
	// Enforced is false when the filter has no rules (only shadow rules).
	Enforced bool
	// Action is the action of the enforced rules.
	Action rbacv3.RBAC_Action
	// Allowed is the filter's verdict; always true when not Enforced.
	Allowed bool
	// Policy is the first enforced policy (in name order, as Envoy checks
	// them) that matched, or "".
	Policy string

	// Shadow reports the shadow (dry-run) rules, when the filter has them.
	Shadow *ShadowResult
}

// ShadowResult is what a filter's shadow rules would have decided.
type ShadowResult struct {
	Action  rbacv3.RBAC_Action
	Allowed bool
	Policy  string
}

// Decision is the outcome of a chain of RBAC filters.
type Decision struct {
	Allowed bool
	// Policy names the policy that decided: the DENY policy that matched,
	// or the ALLOW policy that matched. Empty when the request was denied
	// because no ALLOW policy matched, or allowed because no ALLOW policy
	// exists.
	Policy string
	// Action is the action of the deciding filter; meaningful only when a
	// filter decided (Filter >= 0).
	Action rbacv3.RBAC_Action
	// Filter is the index of the filter that denied, or of the last
	// enforced ALLOW filter that allowed; -1 when no filter decided.
	Filter int
	// Reason explains the decision in one sentence.
	Reason string
	// Filters holds every RBAC filter evaluated, in order; evaluation stops
	// at the first denial, as in Envoy.
	Filters []FilterResult
	// Logged lists the LOG (AUDIT) policies that matched.
	Logged []string
}

// rbacConfig is the part common to the HTTP and network RBAC configs.
type rbacConfig struct {
	name        string
	rules       *rbacv3.RBAC
	shadowRules *rbacv3.RBAC
	hasMatcher  bool
}

// EvaluateHTTP runs r through the HTTP filters in order, as Envoy's HTTP
// connection manager would. Filters other than envoy.filters.http.rbac are
// skipped; disabled filters are skipped.
func (e *Evaluator) EvaluateHTTP(filters []*hcmv3.HttpFilter, r *Request) (Decision, error) {
	var cfgs []rbacConfig
	for i, f := range filters {
		if f.GetDisabled() {
			cfgs = append(cfgs, rbacConfig{})
			continue
		}
		if f.GetConfigDiscovery() != nil {
			return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): config discovery: %w", i, f.GetName(), ErrUnsupported)
		}
		a := f.GetTypedConfig()
		if a == nil || !a.MessageIs(&httprbacv3.RBAC{}) {
			cfgs = append(cfgs, rbacConfig{})
			continue
		}
		var c httprbacv3.RBAC
		if err := unpack(a, &c); err != nil {
			return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): %w", i, f.GetName(), err)
		}
		cfgs = append(cfgs, rbacConfig{name: f.GetName(), rules: c.GetRules(), shadowRules: c.GetShadowRules(),
			hasMatcher: c.GetMatcher() != nil || c.GetShadowMatcher() != nil})
	}
	return e.evaluate(cfgs, r)
}

// EvaluateNetwork runs a connection through the network filters in order.
// Filters other than envoy.filters.network.rbac are skipped. HTTP fields of
// r are ignored: a network filter sees no headers.
func (e *Evaluator) EvaluateNetwork(filters []*listenerv3.Filter, r *Request) (Decision, error) {
	conn := *r
	conn.Headers = nil
	var cfgs []rbacConfig
	for i, f := range filters {
		if f.GetConfigDiscovery() != nil {
			return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): config discovery: %w", i, f.GetName(), ErrUnsupported)
		}
		a := f.GetTypedConfig()
		if a == nil || !a.MessageIs(&netrbacv3.RBAC{}) {
			cfgs = append(cfgs, rbacConfig{})
			continue
		}
		var c netrbacv3.RBAC
		if err := unpack(a, &c); err != nil {
			return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): %w", i, f.GetName(), err)
		}
		cfgs = append(cfgs, rbacConfig{name: f.GetName(), rules: c.GetRules(), shadowRules: c.GetShadowRules(),
			hasMatcher: c.GetMatcher() != nil || c.GetShadowMatcher() != nil})
	}
	return e.evaluate(cfgs, &conn)
}

// validatable is a generated Envoy message.
type validatable interface {
	proto.Message
	ValidateAll() error
}

// unpack decodes a typed config and checks it as Envoy would on load.
func unpack(a *anypb.Any, m validatable) error {
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("decoding %s: %w", a.GetTypeUrl(), err)
	}
	if err := m.ValidateAll(); err != nil {
		return fmt.Errorf("invalid %s (Envoy would reject it): %w", a.GetTypeUrl(), err)
	}
	return nil
}

func (e *Evaluator) evaluate(cfgs []rbacConfig, r *Request) (Decision, error) {
	d := Decision{Allowed: true, Filter: -1}
	for i, c := range cfgs {
		if c.name == "" && c.rules == nil && c.shadowRules == nil {
			continue // not an RBAC filter
		}
		if c.hasMatcher {
			return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): the matcher API: %w", i, c.name, ErrUnsupported)
		}
		fr := FilterResult{Index: i, Name: c.name, Allowed: true}
		if c.shadowRules != nil {
			allowed, pol, err := e.engine(c.shadowRules, r)
			if err != nil {
				return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s) shadow rules: %w", i, c.name, err)
			}
			fr.Shadow = &ShadowResult{Action: c.shadowRules.GetAction(), Allowed: allowed, Policy: pol}
		}
		if c.rules != nil {
			fr.Enforced = true
			fr.Action = c.rules.GetAction()
			allowed, pol, err := e.engine(c.rules, r)
			if err != nil {
				return Decision{}, fmt.Errorf("envoyrbac: filter %d (%s): %w", i, c.name, err)
			}
			fr.Allowed, fr.Policy = allowed, pol
		}
		d.Filters = append(d.Filters, fr)
		if !fr.Enforced {
			continue
		}
		switch fr.Action {
		case rbacv3.RBAC_LOG:
			if fr.Policy != "" {
				d.Logged = append(d.Logged, fr.Policy)
			}
		case rbacv3.RBAC_DENY:
			if !fr.Allowed {
				d.Allowed, d.Policy, d.Action, d.Filter = false, fr.Policy, fr.Action, i
				d.Reason = fmt.Sprintf("denied by DENY policy %s", fr.Policy)
				return d, nil
			}
		case rbacv3.RBAC_ALLOW:
			if !fr.Allowed {
				d.Allowed, d.Policy, d.Action, d.Filter = false, "", fr.Action, i
				d.Reason = "denied: ALLOW policies exist and none matched"
				return d, nil
			}
			d.Policy, d.Action, d.Filter = fr.Policy, fr.Action, i
		}
	}
	switch {
	case d.Filter >= 0:
		d.Reason = fmt.Sprintf("allowed by ALLOW policy %s", d.Policy)
	default:
		d.Reason = "allowed: no DENY policy matched and no ALLOW policy exists"
	}
	return d, nil
}

// engine evaluates one RBAC rule set as Envoy's RoleBasedAccessControlEngine
// does: policies are checked in name order and the first match is the
// effective policy. It returns whether the request passes and that policy.
func (e *Evaluator) engine(rules *rbacv3.RBAC, r *Request) (bool, string, error) {
	var matched string
	for _, name := range slices.Sorted(maps.Keys(rules.GetPolicies())) {
		ok, err := e.policy(rules.GetPolicies()[name], r)
		if err != nil {
			return false, "", fmt.Errorf("policy %s: %w", name, err)
		}
		if ok {
			matched = name
			break
		}
	}
	switch rules.GetAction() {
	case rbacv3.RBAC_ALLOW:
		return matched != "", matched, nil
	case rbacv3.RBAC_DENY:
		return matched == "", matched, nil
	case rbacv3.RBAC_LOG:
		return true, matched, nil
	}
	return false, "", fmt.Errorf("action %v: %w", rules.GetAction(), ErrUnsupported)
}

// policy reports whether any permission and any principal match.
func (e *Evaluator) policy(p *rbacv3.Policy, r *Request) (bool, error) {
	if p.GetCondition() != nil || p.GetCheckedCondition() != nil || p.GetCelConfig() != nil {
		return false, fmt.Errorf("CEL condition: %w", ErrUnsupported)
	}
	permOK := false
	for _, perm := range p.GetPermissions() {
		ok, err := e.permission(perm, r)
		if err != nil {
			return false, err
		}
		if ok {
			permOK = true
			break
		}
	}
	if !permOK {
		return false, nil
	}
	for _, prin := range p.GetPrincipals() {
		ok, err := e.principal(prin, r)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}
