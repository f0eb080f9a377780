package rbac

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
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

// Build assembles the filters for a workload from the translations of the
// policies that apply to it. The order of ts does not matter. Every
// generated filter passes ValidateAll.
func Build(ts []*Translation) (*Filters, error) {
	f := &Filters{}
	for _, action := range actionOrder {
		var (
			httpRules, httpShadow = newRBAC(action), newRBAC(action)
			tcpRules, tcpShadow   = newRBAC(action), newRBAC(action)
			enforced, dryRun      bool
		)
		for _, t := range ts {
			if t == nil || t.Action != action {
				continue
			}
			hr, tr := httpRules, tcpRules
			if t.DryRun {
				hr, tr = httpShadow, tcpShadow
				dryRun = true
			} else {
				enforced = true
			}
			for _, r := range t.HTTP {
				hr.Policies[r.Name] = r.Policy
			}
			for _, r := range t.TCP {
				tr.Policies[r.Name] = r.Policy
			}
		}
		if !enforced && !dryRun {
			continue
		}
		// Without an enforced policy, rules stay unset: Envoy then enforces
		// nothing and only evaluates the shadow rules. (An empty ALLOW
		// would deny everything.)
		if !enforced {
			httpRules, tcpRules = nil, nil
		}
		if !dryRun {
			httpShadow, tcpShadow = nil, nil
		}
		hc := &httprbacv3.RBAC{Rules: httpRules, ShadowRules: httpShadow}
		nc := &netrbacv3.RBAC{Rules: tcpRules, ShadowRules: tcpShadow, StatPrefix: NetworkStatPrefix}
		if dryRun {
			hc.ShadowRulesStatPrefix = shadowStatPrefix(action)
			nc.ShadowRulesStatPrefix = shadowStatPrefix(action)
		}
		hf, err := httpFilter(hc)
		if err != nil {
			return nil, err
		}
		nf, err := networkFilter(nc)
		if err != nil {
			return nil, err
		}
		f.HTTP = append(f.HTTP, hf)
		f.Network = append(f.Network, nf)
	}
	return f, nil
}

func newRBAC(a rbacv3.RBAC_Action) *rbacv3.RBAC {
	return &rbacv3.RBAC{Action: a, Policies: map[string]*rbacv3.Policy{}}
}

func httpFilter(c *httprbacv3.RBAC) (*hcmv3.HttpFilter, error) {
	if err := c.ValidateAll(); err != nil {
		return nil, fmt.Errorf("rbac: generated HTTP RBAC config is invalid: %w", err)
	}
	a, err := marshalAny(c)
	if err != nil {
		return nil, err
	}
	f := &hcmv3.HttpFilter{Name: HTTPFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}
	if err := f.ValidateAll(); err != nil {
		return nil, fmt.Errorf("rbac: generated HTTP filter is invalid: %w", err)
	}
	return f, nil
}

func networkFilter(c *netrbacv3.RBAC) (*listenerv3.Filter, error) {
	if err := c.ValidateAll(); err != nil {
		return nil, fmt.Errorf("rbac: generated network RBAC config is invalid: %w", err)
	}
	a, err := marshalAny(c)
	if err != nil {
		return nil, err
	}
	f := &listenerv3.Filter{Name: NetworkFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
	if err := f.ValidateAll(); err != nil {
		return nil, fmt.Errorf("rbac: generated network filter is invalid: %w", err)
	}
	return f, nil
}

// marshalAny packs m deterministically, so equal configs give equal bytes.
func marshalAny(m proto.Message) (*anypb.Any, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rbac: marshaling %T: %w", m, err)
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, nil
}
