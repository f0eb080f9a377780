package rbac

import (
	"fmt"
	"slices"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy filter names.
const (
	HTTPFilterName    = "envoy.filters.http.rbac"
	NetworkFilterName = "envoy.filters.network.rbac"
)

// NetworkStatPrefix is the stat prefix of the generated network filters.
const NetworkStatPrefix = "tcp."

// Filters is the ordered list of RBAC filters for one workload: AUDIT (LOG)
// first, then DENY, then ALLOW. A filter is present only when a policy of
// its action applies.
type Filters struct {
	// HTTP goes into the http_filters of an HTTP connection manager, before
	// the router.
	HTTP []*hcmv3.HttpFilter
	// Network goes into the filters of a TCP filter chain, before the proxy
	// filter.
	Network []*listenerv3.Filter
	// Actions holds the action of HTTP[i] and Network[i].
	Actions []rbacv3.RBAC_Action
}

// actionOrder is the order of the filters.
var actionOrder = []rbacv3.RBAC_Action{rbacv3.RBAC_LOG, rbacv3.RBAC_DENY, rbacv3.RBAC_ALLOW}

// shadowStatPrefix names the dry-run stats per action, as Istio does.
func shadowStatPrefix(a rbacv3.RBAC_Action) string {
	switch a {
	case rbacv3.RBAC_ALLOW:
		return "istio_dry_run_allow_"
	case rbacv3.RBAC_DENY:
		return "istio_dry_run_deny_"
	default:
		return "istio_dry_run_audit_"
	}
}

// ruleSet collects the policies of one RBAC rule set.
type ruleSet struct {
	present bool
	rules   []Rule
}

func (s *ruleSet) add(rs []Rule) {
	s.present = true
	s.rules = append(s.rules, rs...)
}

// Build assembles the filters for a workload from the translations of the
// policies that apply to it. The order of ts does not matter.
//
// Every generated filter config passes ValidateAll: each policy was
// validated when it was translated, and the rest of the config (action,
// stat prefixes) is validated here. The policies were also encoded when
// translated, so Build only concatenates their bytes, in name order; the
// result is byte for byte what a deterministic proto.Marshal of the whole
// config gives.
func Build(ts []*Translation) (*Filters, error) {
	f := &Filters{}
	for _, action := range actionOrder {
		var httpRules, httpShadow, tcpRules, tcpShadow ruleSet
		for _, t := range ts {
			if t == nil || t.Action != action {
				continue
			}
			if t.DryRun {
				httpShadow.add(t.HTTP)
				tcpShadow.add(t.TCP)
			} else {
				httpRules.add(t.HTTP)
				tcpRules.add(t.TCP)
			}
		}
		if !httpRules.present && !httpShadow.present {
			continue
		}
		// Without an enforced policy, rules stay unset: Envoy then enforces
		// nothing and only evaluates the shadow rules. (An empty ALLOW
		// would deny everything.)
		prefix := ""
		if httpShadow.present {
			prefix = shadowStatPrefix(action)
		}
		shell := &httprbacv3.RBAC{ShadowRulesStatPrefix: prefix}
		netShell := &netrbacv3.RBAC{StatPrefix: NetworkStatPrefix, ShadowRulesStatPrefix: prefix}
		if httpRules.present {
			shell.Rules = &rbacv3.RBAC{Action: action}
			netShell.Rules = &rbacv3.RBAC{Action: action}
		}
		if httpShadow.present {
			shell.ShadowRules = &rbacv3.RBAC{Action: action}
			netShell.ShadowRules = &rbacv3.RBAC{Action: action}
		}
		if err := shell.ValidateAll(); err != nil {
			return nil, fmt.Errorf("rbac: generated HTTP RBAC config is invalid: %w", err)
		}
		if err := netShell.ValidateAll(); err != nil {
			return nil, fmt.Errorf("rbac: generated network RBAC config is invalid: %w", err)
		}

		// HTTP RBAC: rules = 1, shadow_rules = 2, shadow_rules_stat_prefix = 3.
		var hb []byte
		hb = appendRuleSet(hb, 1, action, httpRules)
		hb = appendRuleSet(hb, 2, action, httpShadow)
		hb = appendString(hb, 3, prefix)
		hf := &hcmv3.HttpFilter{Name: HTTPFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{
			TypeUrl: typeURL(shell), Value: hb,
		}}}
		// Network RBAC: rules = 1, shadow_rules = 2, stat_prefix = 3,
		// shadow_rules_stat_prefix = 5.
		var nb []byte
		nb = appendRuleSet(nb, 1, action, tcpRules)
		nb = appendRuleSet(nb, 2, action, tcpShadow)
		nb = appendString(nb, 3, NetworkStatPrefix)
		nb = appendString(nb, 5, prefix)
		nf := &listenerv3.Filter{Name: NetworkFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{
			TypeUrl: typeURL(netShell), Value: nb,
		}}}
		f.HTTP = append(f.HTTP, hf)
		f.Network = append(f.Network, nf)
		f.Actions = append(f.Actions, action)
	}
	return f, nil
}

// appendRuleSet appends field num holding an rbac.v3.RBAC with the action
// (field 1) and the policies (field 2, map entries in name order), or
// nothing when the set is absent.
func appendRuleSet(b []byte, num protowire.Number, action rbacv3.RBAC_Action, s ruleSet) []byte {
	if !s.present {
		return b
	}
	rules := slices.Clone(s.rules)
	slices.SortFunc(rules, func(a, b Rule) int { return strings.Compare(a.Name, b.Name) })
	rules = slices.CompactFunc(rules, func(a, b Rule) bool { return a.Name == b.Name })
	size := 0
	if action != 0 {
		size += protowire.SizeTag(1) + protowire.SizeVarint(uint64(action))
	}
	for _, r := range rules {
		size += len(r.entry)
	}
	b = slices.Grow(b, protowire.SizeTag(num)+protowire.SizeBytes(size))
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	if action != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(action))
	}
	for _, r := range rules {
		b = append(b, r.entry...)
	}
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// encodeEntry encodes one entry of RBAC.policies (field 2): key = 1, value
// = 2.
func encodeEntry(name string, p *rbacv3.Policy) ([]byte, error) {
	pb, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("rbac: encoding policy %s: %w", name, err)
	}
	var inner []byte
	inner = protowire.AppendTag(inner, 1, protowire.BytesType)
	inner = protowire.AppendString(inner, name)
	inner = protowire.AppendTag(inner, 2, protowire.BytesType)
	inner = protowire.AppendBytes(inner, pb)
	var entry []byte
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	return protowire.AppendBytes(entry, inner), nil
}

func typeURL(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

// marshalAny packs m deterministically, so equal configs give equal bytes.
func marshalAny(m proto.Message) (*anypb.Any, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rbac: marshaling %T: %w", m, err)
	}
	return &anypb.Any{TypeUrl: typeURL(m), Value: b}, nil
}
