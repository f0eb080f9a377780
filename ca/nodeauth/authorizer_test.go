package nodeauth

import (
	"context"
	"errors"
	"testing"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
)

// podTable is a unit-test Pods: a fixed list of pods.
type podTable struct {
	pods     []Pod
	unsynced bool
}

func (p podTable) Synced() bool { return !p.unsynced }

func (p podTable) Pod(ns, name string) (Pod, bool) {
	for _, q := range p.pods {
		if q.Namespace == ns && q.Name == name {
			return q, true
		}
	}
	return Pod{}, false
}

func (p podTable) ActiveOnNode(node string, sa ServiceAccount) bool {
	for _, q := range p.pods {
		if q.NodeName == node && q.Namespace == sa.Namespace && q.ServiceAccount == sa.Name && q.Active() {
			return true
		}
	}
	return false
}

func TestAuthorizeImpersonation(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	agentPod := Pod{Namespace: "castellan-system", Name: "agent-a", UID: "uid-a", NodeName: "node-a", ServiceAccount: "castellan-agent", Phase: corev1.PodRunning}
	pods := []Pod{
		agentPod,
		{Namespace: "castellan-system", Name: "agent-done", UID: "uid-done", NodeName: "node-a", ServiceAccount: "castellan-agent", Phase: corev1.PodSucceeded},
		{Namespace: "castellan-system", Name: "agent-deleting", UID: "uid-del", NodeName: "node-a", ServiceAccount: "castellan-agent", Phase: corev1.PodRunning, Deleting: true},
		{Namespace: "castellan-system", Name: "other-sa", UID: "uid-o", NodeName: "node-a", ServiceAccount: "default", Phase: corev1.PodRunning},
		{Namespace: "castellan-system", Name: "unscheduled", UID: "uid-u", ServiceAccount: "castellan-agent", Phase: corev1.PodPending},
		{Namespace: "shop", Name: "web-1", UID: "uid-w1", NodeName: "node-a", ServiceAccount: "web", Phase: corev1.PodRunning},
		{Namespace: "shop", Name: "web-pending", UID: "uid-w2", NodeName: "node-a", ServiceAccount: "starting", Phase: corev1.PodPending},
		{Namespace: "shop", Name: "leaving-1", UID: "uid-l1", NodeName: "node-a", ServiceAccount: "leaving", Phase: corev1.PodRunning, Deleting: true},
		{Namespace: "shop", Name: "db-1", UID: "uid-d1", NodeName: "node-b", ServiceAccount: "db", Phase: corev1.PodRunning},
		{Namespace: "shop", Name: "batch-1", UID: "uid-b1", NodeName: "node-a", ServiceAccount: "batch", Phase: corev1.PodSucceeded},
		{Namespace: "shop", Name: "crash-1", UID: "uid-c1", NodeName: "node-a", ServiceAccount: "crash", Phase: corev1.PodFailed},
	}
	agent := authn.Caller{Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "agent-a", PodUID: "uid-a", NodeName: "node-a"}
	with := func(edit func(*authn.Caller)) authn.Caller {
		c := agent
		edit(&c)
		return c
	}
	id := func(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
	web := id("spiffe://cluster.local/ns/shop/sa/web")
	tests := []struct {
		name     string
		caller   authn.Caller
		target   spiffeid.ID
		unsynced bool
		want     Reason // empty: granted
	}{
		{name: "agent, pod on its node", caller: agent, target: web},
		{name: "agent, pending pod on its node", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/starting")},
		{name: "agent, its own identity", caller: agent, target: id("spiffe://cluster.local/ns/castellan-system/sa/castellan-agent")},
		{name: "token without node name", caller: with(func(c *authn.Caller) { c.NodeName = "" }), target: web},
		{name: "not a node agent", caller: authn.Caller{Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-w1", NodeName: "node-a"}, target: web, want: ReasonNotNodeAgent},
		{name: "agent name in another namespace", caller: with(func(c *authn.Caller) { c.Namespace = "shop" }), target: web, want: ReasonNotNodeAgent},
		{name: "not a node agent, malformed target", caller: authn.Caller{Namespace: "shop", ServiceAccount: "web"}, want: ReasonNotNodeAgent},
		{name: "zero target", caller: agent, want: ReasonInvalidTarget},
		{name: "other trust domain", caller: agent, target: id("spiffe://evil.example/ns/shop/sa/web"), want: ReasonInvalidTarget},
		{name: "not a service account path", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/web/extra"), want: ReasonInvalidTarget},
		{name: "swapped segments", caller: agent, target: id("spiffe://cluster.local/sa/web/ns/shop"), want: ReasonInvalidTarget},
		{name: "no path", caller: agent, target: id("spiffe://cluster.local"), want: ReasonInvalidTarget},
		{name: "bad namespace name", caller: agent, target: id("spiffe://cluster.local/ns/Shop/sa/web"), want: ReasonInvalidTarget},
		{name: "token bound to no pod", caller: with(func(c *authn.Caller) { c.PodName, c.PodUID, c.NodeName = "", "", "" }), target: web, want: ReasonTokenNotPodBound},
		{name: "pod name without UID", caller: with(func(c *authn.Caller) { c.PodUID = "" }), target: web, want: ReasonTokenNotPodBound},
		{name: "pods not listed yet", caller: agent, target: web, unsynced: true, want: ReasonPodsUnavailable},
		{name: "agent pod deleted", caller: with(func(c *authn.Caller) { c.PodName = "agent-gone" }), target: web, want: ReasonAgentPodGone},
		{name: "agent pod replaced (UID differs)", caller: with(func(c *authn.Caller) { c.PodUID = "uid-old" }), target: web, want: ReasonAgentPodGone},
		{name: "agent pod terminated", caller: with(func(c *authn.Caller) { c.PodName, c.PodUID = "agent-done", "uid-done" }), target: web, want: ReasonAgentPodGone},
		{name: "agent pod being deleted", caller: with(func(c *authn.Caller) { c.PodName, c.PodUID = "agent-deleting", "uid-del" }), target: web, want: ReasonAgentPodGone},
		{name: "terminating workload pod still counts", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/leaving")},
		{name: "token bound to a pod of another service account", caller: with(func(c *authn.Caller) { c.PodName, c.PodUID = "other-sa", "uid-o" }), target: web, want: ReasonAgentPodMismatch},
		{name: "agent pod not scheduled", caller: with(func(c *authn.Caller) { c.PodName, c.PodUID = "unscheduled", "uid-u" }), target: web, want: ReasonAgentPodMismatch},
		{name: "token names another node", caller: with(func(c *authn.Caller) { c.NodeName = "node-b" }), target: web, want: ReasonAgentPodMismatch},
		{name: "pod on another node", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/db"), want: ReasonNoPodOnNode},
		{name: "no pod at all", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/nobody"), want: ReasonNoPodOnNode},
		{name: "only a succeeded pod", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/batch"), want: ReasonNoPodOnNode},
		{name: "only a failed pod", caller: agent, target: id("spiffe://cluster.local/ns/shop/sa/crash"), want: ReasonNoPodOnNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Config{
				TrustDomain: td,
				NodeAgents:  []ServiceAccount{{"castellan-system", "castellan-agent"}, {"istio-system", "ztunnel"}},
				Pods:        podTable{pods: pods, unsynced: tt.unsynced},
			})
			if err != nil {
				t.Fatal(err)
			}
			err = a.AuthorizeImpersonation(context.Background(), tt.caller, tt.target)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("granted, want %s", tt.want)
			case ReasonOf(err) != tt.want:
				t.Fatalf("reason = %q, want %q (%v)", ReasonOf(err), tt.want, err)
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Err == nil || e.Error() == "") {
				t.Fatalf("error %v is not a *nodeauth.Error with a message", err)
			}
		})
	}
}

func TestNewAuthorizerConfig(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	agents := []ServiceAccount{{"castellan-system", "castellan-agent"}}
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no trust domain", cfg: Config{NodeAgents: agents, Pods: podTable{}}},
		{name: "no node agents", cfg: Config{TrustDomain: td, Pods: podTable{}}},
		{name: "no pods", cfg: Config{TrustDomain: td, NodeAgents: agents}},
		{name: "invalid agent", cfg: Config{TrustDomain: td, NodeAgents: []ServiceAccount{{"", "x"}}, Pods: podTable{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New accepted the config")
			}
		})
	}
}

func TestParseServiceAccount(t *testing.T) {
	tests := []struct {
		in   string
		want ServiceAccount
		ok   bool
	}{
		{"castellan-system/castellan-agent", ServiceAccount{"castellan-system", "castellan-agent"}, true},
		{"istio-system/ztunnel", ServiceAccount{"istio-system", "ztunnel"}, true},
		{"ns/sa.with.dots", ServiceAccount{"ns", "sa.with.dots"}, true},
		{"castellan-agent", ServiceAccount{}, false},
		{"/sa", ServiceAccount{}, false},
		{"ns/", ServiceAccount{}, false},
		{"ns/sa/x", ServiceAccount{}, false},
		{"NS/sa", ServiceAccount{}, false},
		{"ns.dotted/sa", ServiceAccount{}, false},
		{"system:serviceaccount:ns:sa", ServiceAccount{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseServiceAccount(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("ParseServiceAccount(%q) = %v, %v", tt.in, got, err)
			}
			if tt.ok && got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

// FuzzParseServiceAccount checks that an accepted value round-trips and
// never carries a separator in a part.
func FuzzParseServiceAccount(f *testing.F) {
	for _, s := range []string{"castellan-system/castellan-agent", "a/b", "/", "a/b/c", "A/b", "ns/sa.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sa, err := ParseServiceAccount(s)
		if err != nil {
			return
		}
		if sa.String() != s {
			t.Fatalf("%q parsed as %v", s, sa)
		}
		if sa.Namespace == "" || sa.Name == "" {
			t.Fatalf("%q parsed with an empty part", s)
		}
	})
}

// FuzzTargetServiceAccount checks that an accepted SPIFFE ID is exactly
// the one made from the service account it names.
func FuzzTargetServiceAccount(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b/c", "spiffe://other/ns/a/sa/b", "spiffe://cluster.local/sa/b/ns/a"} {
		f.Add(s)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		sa, err := TargetServiceAccount(td, id)
		if err != nil {
			return
		}
		want, err := spiffeid.FromSegments(td, "ns", sa.Namespace, "sa", sa.Name)
		if err != nil || want != id {
			t.Fatalf("%s accepted as %v (rebuilt %v, %v)", id, sa, want, err)
		}
	})
}
