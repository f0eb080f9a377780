package check

import (
	"fmt"
	"io"
	"strings"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// Decide runs r through the filters generated for a workload: its HTTP
// filters, or with tcp its network filters. The decision tests the
// translation too, since it comes from the Envoy configuration and not
// from the policies.
func Decide(cfg *authz.WorkloadConfig, r *envoyrbac.Request, tcp bool) (envoyrbac.Decision, error) {
	ev := envoyrbac.New()
	if tcp {
		return ev.EvaluateNetwork(cfg.NetworkFilters, r)
	}
	return ev.EvaluateHTTP(cfg.HTTPFilters, r)
}

// Report is a decision as a document (JSON or YAML).
type Report struct {
	// Decision is ALLOW or DENY.
	Decision string `json:"decision"`
	// Policy is the Envoy policy that decided, if any; Action its action.
	Policy string `json:"policy,omitempty"`
	Action string `json:"action,omitempty"`
	// Reason explains the decision in one sentence.
	Reason string `json:"reason"`
	// Logged lists the AUDIT policies that matched.
	Logged []string `json:"logged,omitempty"`
	// Shadow holds what the dry-run rules of each filter would have done.
	Shadow []Shadow `json:"shadow,omitempty"`
}

// Shadow is what the dry-run rules of one filter would have done.
type Shadow struct {
	Filter  int    `json:"filter"`
	Action  string `json:"action"`
	Allowed bool   `json:"allowed"`
	Policy  string `json:"policy,omitempty"`
}

// NewReport returns the document of d.
func NewReport(d envoyrbac.Decision) Report {
	out := Report{Decision: verdict(d), Policy: d.Policy, Reason: d.Reason, Logged: d.Logged}
	if d.Filter >= 0 {
		out.Action = d.Action.String()
	}
	for _, f := range d.Filters {
		if f.Shadow != nil {
			out.Shadow = append(out.Shadow, Shadow{Filter: f.Index, Action: f.Shadow.Action.String(), Allowed: f.Shadow.Allowed, Policy: f.Shadow.Policy})
		}
	}
	return out
}

// WriteText writes d for a person: the verdict, then the policy that
// decided, the reason, the audits and the dry-run outcomes, each policy
// named with the AuthorizationPolicy rule it comes from.
func WriteText(w io.Writer, d envoyrbac.Decision) error {
	var b strings.Builder
	fmt.Fprintln(&b, verdict(d))
	if d.Policy != "" {
		fmt.Fprintf(&b, "  decided by: %s\n", describeRule(d.Policy))
	}
	fmt.Fprintf(&b, "  reason:     %s\n", d.Reason)
	for _, l := range d.Logged {
		fmt.Fprintf(&b, "  audited by: %s\n", describeRule(l))
	}
	for _, f := range d.Filters {
		s := f.Shadow
		if s == nil {
			continue
		}
		effect := "would allow"
		if !s.Allowed {
			effect = "would deny"
		}
		by := ""
		if s.Policy != "" {
			by = " (" + describeRule(s.Policy) + ")"
		}
		fmt.Fprintf(&b, "  dry-run:    %s rules %s%s\n", s.Action, effect, by)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func verdict(d envoyrbac.Decision) string {
	if d.Allowed {
		return "ALLOW"
	}
	return "DENY"
}

// describeRule names the AuthorizationPolicy rule behind an Envoy policy.
func describeRule(name string) string {
	ns, pol, rule, ok := rbac.ParseRuleName(name)
	if !ok {
		return name
	}
	return fmt.Sprintf("%s (AuthorizationPolicy %s/%s, rule %d)", name, ns, pol, rule)
}
