package watch_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/watch"
)

// This unit test drives the event handlers with client-go's fake dynamic
// client; the integration test runs the same Source against a real API
// server.

func object(kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       spec,
	}}
	return u
}

func waitFor(t *testing.T, e *authz.Engine, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-e.Changed():
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestSourceFeedsEngine(t *testing.T) {
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		watch.AuthorizationPolicies: "AuthorizationPolicyList",
		watch.PeerAuthentications:   "PeerAuthenticationList",
	}, object("AuthorizationPolicy", "foo", "deny", map[string]any{"action": "DENY"}))
	e, err := authz.New(authz.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e.SetWorkload(policy.Workload{Namespace: "foo", Name: "web", Labels: map[string]string{"app": "web"}})
	src, err := watch.New(watch.Config{Client: client}, e)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	has := func(name string) func() bool {
		return func() bool {
			cfg, _, _ := e.Workload("foo", "web")
			for _, k := range cfg.Policies {
				if k.Name == name {
					return true
				}
			}
			return false
		}
	}
	waitFor(t, e, "the initial policy", has("deny"))
	// Each kind has its own informer: the AuthorizationPolicy one can
	// deliver before the PeerAuthentication one has listed.
	waitFor(t, e, "both informers to sync", src.HasSynced)

	ap := client.Resource(watch.AuthorizationPolicies).Namespace("foo")
	if _, err := ap.Create(ctx, object("AuthorizationPolicy", "foo", "allow", map[string]any{"rules": []any{map[string]any{}}}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, e, "the created policy", has("allow"))

	// An invalid update is rejected and the last good version kept.
	bad := object("AuthorizationPolicy", "foo", "allow", map[string]any{"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"ipBlocks": []any{"10.0.0.0/99"}}}}}}})
	if _, err := ap.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	key := policy.Key{Kind: policy.KindAuthorizationPolicy, Namespace: "foo", Name: "allow"}
	waitFor(t, e, "the rejection", func() bool { return e.Problems()[key] != nil })
	if !has("allow")() {
		t.Error("the rejected update removed the policy")
	}

	if err := ap.Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, e, "the deletion", func() bool { return !has("deny")() })
}
