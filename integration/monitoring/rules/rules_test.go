package rules

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite ../testdata/metrics.txt from the expressions")

const (
	monitoringDir = "../../../deploy/monitoring"
	metricsFile   = "../testdata/metrics.txt"
)

// promQL is Prometheus's parser with its default options, as a Prometheus
// server loading the rules uses it.
var promQL = parser.NewParser(parser.Options{})

// ruleGroups reads the PrometheusRule's spec and validates it as a
// Prometheus rule file: every expression parses, every template is valid,
// no field is unknown.
func ruleGroups(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoringDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var obj struct {
		Kind string          `json:"kind"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	if obj.Kind != "PrometheusRule" {
		t.Fatalf("prometheusrule.yaml: kind %q, want PrometheusRule", obj.Kind)
	}
	spec, err := yaml.JSONToYAML(obj.Spec)
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, promQL, nil)
	if len(errs) > 0 {
		t.Fatalf("prometheusrule.yaml is not a valid Prometheus rule file: %v", errs)
	}
	return groups
}

// grafanaVars are the dashboard's Grafana variables, replaced by values
// Prometheus parses, as Grafana does before sending a query.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// dashboardExprs returns the query of every panel target, by panel title.
func dashboardExprs(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoringDir, "dashboards", "castellan.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("castellan.json: %v", err)
	}
	out := map[string][]string{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out[p.Title] = append(out[p.Title], tg.Expr)
		}
	}
	return out
}

// metricNames returns the metric names an expression selects; a selector
// without a metric name is an error (it would match any series).
func metricNames(expr parser.Expr) ([]string, error) {
	var names []string
	var err error
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name == "" {
			err = fmt.Errorf("selector %s names no metric", vs)
			return nil
		}
		names = append(names, vs.Name)
		return nil
	})
	return names, err
}

// TestExpressionsNameListedMetrics parses every rule and panel expression
// with Prometheus's parser and checks that the metrics they name are those
// in ../testdata/metrics.txt, which the integration test holds against a
// scrape of a running CA and agent.
func TestExpressionsNameListedMetrics(t *testing.T) {
	used := map[string][]string{} // metric -> where
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			expr, err := promQL.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("rule %s: %v", r.Alert, err)
			}
			names, err := metricNames(expr)
			if err != nil {
				t.Errorf("rule %s: %v", r.Alert, err)
			}
			for _, n := range names {
				used[n] = append(used[n], "alert "+r.Alert)
			}
		}
	}
	for title, exprs := range dashboardExprs(t) {
		for _, e := range exprs {
			expr, err := promQL.ParseExpr(grafanaVars.Replace(e))
			if err != nil {
				t.Errorf("panel %q: %q: %v", title, e, err)
				continue
			}
			if _, ok := expr.(*parser.StringLiteral); ok {
				t.Errorf("panel %q: %q is a string, not a query", title, e)
			}
			names, err := metricNames(expr)
			if err != nil {
				t.Errorf("panel %q: %v", title, err)
			}
			for _, n := range names {
				used[n] = append(used[n], "panel "+title)
			}
		}
	}
	var got []string
	for n := range used {
		if !strings.HasPrefix(n, "castellan_") {
			t.Errorf("%s (in %v) is not one of Castellan's metrics", n, used[n])
		}
		got = append(got, n)
	}
	slices.Sort(got)
	text := strings.Join(got, "\n") + "\n"
	if *update {
		if err := os.WriteFile(metricsFile, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(metricsFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != text {
		t.Fatalf("the expressions name these metrics:\n%s\n%s lists:\n%s\n(run go test -update, then the integration test)", text, metricsFile, want)
	}
}

// alertCase is a synthetic history, in promqltest's load notation at one
// sample a minute from time 0, in which an alert must start firing at
// firesAt and be resolved at resolvedAt (minutes), and not fire before.
type alertCase struct {
	load       string
	firesAt    int
	resolvedAt int
}

// A pod's identity labels, as the PodMonitors attach them.
const ca, agent = `namespace="castellan-system",pod="castellan-ca-0"`, `namespace="castellan-system",pod="castellan-agent-x7"`

var alertCases = map[string]alertCase{
	// The root expires 100 days after time 0; from minute 60 to 119 a
	// root expiring 10 days after time 0 is served (hold 1h), then the new one.
	"CastellanRootExpiringSoon": {
		load:    `castellan_ca_root_expiry_timestamp_seconds{` + ca + `} 8640000x59 864000x89 8640000x59`,
		firesAt: 120, resolvedAt: 150,
	},
	"CastellanChainExpiringSoon": {
		load:    `castellan_ca_chain_expiry_timestamp_seconds{` + ca + `} 8640000x59 864000x89 8640000x59`,
		firesAt: 120, resolvedAt: 150,
	},
	// Two failures a second from minute 30 to 90, then none: the 5m rate
	// passes 1/s at minute 33 (hold 10m) and falls to 1/s at minute 92.
	"CastellanAuthenticationFailures": {
		load:    `castellan_ca_auth_failures_total{` + ca + `,reason="invalid_token"} 0x29 0+120x60 7200x59`,
		firesAt: 43, resolvedAt: 92,
	},
	// One failed TokenReview every 10 s from minute 30 to 60 (hold 5m);
	// the last increase leaves the 5m window at minute 64.
	"CastellanTokenReviewErrors": {
		load: `castellan_tokenreviews_total{` + ca + `,result="error"} 0x29 0+6x30 180x59
castellan_tokenreviews_total{` + ca + `,result="authenticated"} 0+60x119`,
		firesAt: 36, resolvedAt: 64,
	},
	// The Secret is unreadable from minute 30 to 59 (hold 5m).
	"CastellanSecretStoreNotReady": {
		load:    `castellan_kubestore_ready{` + ca + `} 1x29 0x29 1x59`,
		firesAt: 35, resolvedAt: 60,
	},
	// Renewal fails from minute 30 to 69 (hold 15m).
	"CastellanIntermediateRenewalFailing": {
		load:    `castellan_ca_intermediate_renewal_failing{` + ca + `} 0x29 1x39 0x59`,
		firesAt: 45, resolvedAt: 70,
	},
	// The SVID is 5 minutes from expiry from minute 30 to 49 (hold 2m).
	"CastellanAgentSVIDExpiringSoon": {
		load:    `castellan_agent_svid_expiry_seconds{` + agent + `} 3000x29 300x19 3000x59`,
		firesAt: 32, resolvedAt: 50,
	},
}

// TestAlertsFireAndResolve evaluates every alerting rule, once a minute,
// with Prometheus's rule engine on its synthetic history, and checks that
// it fires when (and not before) its condition has held for its "for",
// with valid annotations, and that it resolves once the condition ends.
func TestAlertsFireAndResolve(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			tc, ok := alertCases[r.Alert]
			if !ok {
				t.Errorf("alert %s has no synthetic history in alertCases", r.Alert)
				continue
			}
			t.Run(r.Alert, func(t *testing.T) { checkAlert(t, r, tc) })
		}
	}
	for name := range alertCases {
		if !seen[name] {
			t.Errorf("alertCases has %s, which the PrometheusRule lacks", name)
		}
	}
}

func checkAlert(t *testing.T, r rulefmt.Rule, tc alertCase) {
	storage := promqltest.LoadedStorage(t, "load 1m\n  "+strings.ReplaceAll(tc.load, "\n", "\n  "))
	engine := promqltest.NewTestEngine(t, false, 5*time.Minute, promqltest.DefaultMaxSamplesPerQuery)
	expr, err := promQL.ParseExpr(r.Expr)
	if err != nil {
		t.Fatal(err)
	}
	rule := rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
		labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", true, nil)
	query := rules.EngineQueryFunc(engine, storage)
	extURL, _ := url.Parse("http://prometheus.example")
	firstFiring, resolved := -1, -1
	for m := 0; m <= tc.resolvedAt+5; m++ {
		ts := time.Unix(0, 0).UTC().Add(time.Duration(m) * time.Minute)
		if _, err := rule.Eval(context.Background(), 0, ts, query, extURL, 0); err != nil {
			t.Fatalf("minute %d: %v", m, err)
		}
		firing := false
		for _, a := range rule.ActiveAlerts() {
			if a.State != rules.StateFiring {
				continue
			}
			firing = true
			if a.Labels.Get("severity") == "" {
				t.Errorf("minute %d: alert %s has no severity", m, a.Labels)
			}
			a.Annotations.Range(func(l labels.Label) {
				if strings.Contains(l.Value, "error expanding template") || l.Value == "" {
					t.Errorf("annotation %s: %q", l.Name, l.Value)
				}
			})
		}
		switch {
		case firing && firstFiring < 0:
			firstFiring = m
		case !firing && firstFiring >= 0 && resolved < 0 && len(rule.ActiveAlerts()) == 0:
			resolved = m
		}
	}
	if firstFiring != tc.firesAt || resolved != tc.resolvedAt {
		t.Fatalf("fired at minute %d, resolved at minute %d; want %d and %d", firstFiring, resolved, tc.firesAt, tc.resolvedAt)
	}
}
