package authn

import (
	"context"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/castellan-mesh/castellan/internal/dnsname"
)

func TestPodBinding(t *testing.T) {
	const uid = "6d1f3e3c-8a63-4c5e-9d1b-1f0a4c3b2a10"
	ev := func(v ...string) authenticationv1.ExtraValue { return v }
	tests := []struct {
		name           string
		extra          map[string]authenticationv1.ExtraValue
		pod, uid, node string
	}{
		{name: "no extra"},
		{
			name:  "pod and node",
			extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("agent-x7"), extraPodUID: ev(uid), extraNodeName: ev("node-a")},
			pod:   "agent-x7", uid: uid, node: "node-a",
		},
		{
			name:  "pod without node",
			extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("agent-x7"), extraPodUID: ev(uid)},
			pod:   "agent-x7", uid: uid,
		},
		{name: "name without UID", extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("agent-x7"), extraNodeName: ev("node-a")}},
		{name: "UID without name", extra: map[string]authenticationv1.ExtraValue{extraPodUID: ev(uid)}},
		{name: "two names", extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("a", "b"), extraPodUID: ev(uid)}},
		{name: "two UIDs", extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("a"), extraPodUID: ev(uid, uid)}},
		{name: "name not a Kubernetes name", extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("../x"), extraPodUID: ev(uid)}},
		{name: "UID too long", extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("a"), extraPodUID: ev(strings.Repeat("u", maxUIDLen+1))}},
		{
			name:  "malformed node is dropped",
			extra: map[string]authenticationv1.ExtraValue{extraPodName: ev("a"), extraPodUID: ev(uid), extraNodeName: ev("Node A")},
			pod:   "a", uid: uid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, uid, node := podBinding(tt.extra)
			if pod != tt.pod || uid != tt.uid || node != tt.node {
				t.Fatalf("podBinding = %q, %q, %q; want %q, %q, %q", pod, uid, node, tt.pod, tt.uid, tt.node)
			}
		})
	}
}

// TestTokenReviewPodBinding checks that Authenticate returns the pod
// binding the API server reports.
func TestTokenReviewPodBinding(t *testing.T) {
	rs := newReviewServer(t)
	rs.answer = func(authenticationv1.TokenReviewSpec) (authenticationv1.TokenReviewStatus, int) {
		return authenticationv1.TokenReviewStatus{
			Authenticated: true, Audiences: []string{"istio-ca"},
			User: authenticationv1.UserInfo{
				Username: "system:serviceaccount:castellan-system:castellan-agent",
				Extra: map[string]authenticationv1.ExtraValue{
					extraPodName: {"castellan-agent-abcde"}, extraPodUID: {"uid-1"}, extraNodeName: {"node-a"},
				},
			},
		}, 0
	}
	tr, err := NewTokenReview(TokenReviewConfig{Client: rs.client(t), Audiences: []string{"istio-ca"}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := tr.Authenticate(context.Background(), "aGVhZA.cGF5bG9hZA.c2ln")
	if err != nil {
		t.Fatal(err)
	}
	want := Caller{Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "castellan-agent-abcde", PodUID: "uid-1", NodeName: "node-a"}
	if got != want {
		t.Fatalf("Authenticate = %+v, want %+v", got, want)
	}
}

// FuzzPodBinding checks that a binding is all or nothing: a returned pod
// always has a UID and a valid name, whatever the API server sent.
func FuzzPodBinding(f *testing.F) {
	f.Add("agent-x7", "6d1f3e3c-8a63-4c5e-9d1b-1f0a4c3b2a10", "node-a", false)
	f.Add("", "uid", "", true)
	f.Add("a/b", "", "n..", false)
	f.Fuzz(func(t *testing.T, pod, uid, node string, twoUIDs bool) {
		extra := map[string]authenticationv1.ExtraValue{extraPodName: {pod}, extraPodUID: {uid}, extraNodeName: {node}}
		if twoUIDs {
			extra[extraPodUID] = append(extra[extraPodUID], uid)
		}
		gotPod, gotUID, gotNode := podBinding(extra)
		if gotPod == "" {
			if gotUID != "" || gotNode != "" {
				t.Fatalf("partial binding %q %q %q", gotPod, gotUID, gotNode)
			}
			return
		}
		if twoUIDs || gotPod != pod || gotUID != uid || gotUID == "" || len(gotUID) > maxUIDLen || !dnsname.IsSubdomain(gotPod) {
			t.Fatalf("podBinding(%q, %q, %q, %v) = %q, %q, %q", pod, uid, node, twoUIDs, gotPod, gotUID, gotNode)
		}
		if gotNode != "" && (gotNode != node || !dnsname.IsSubdomain(gotNode)) {
			t.Fatalf("node %q from %q", gotNode, node)
		}
	})
}

// TestJWTPodBinding checks that an offline-verified token's kubernetes.io
// pod and node claims become the Caller's pod binding, all or nothing.
func TestJWTPodBinding(t *testing.T) {
	m := newTestMinter(t, testIssuer)
	j, _ := newFileJWT(t, m, "istio-ca")
	now := time.Now()
	claims := jwt.Claims{Issuer: testIssuer, Subject: "system:serviceaccount:castellan-system:castellan-agent",
		Audience: jwt.Audience{"istio-ca"}, Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now)}
	k8s := func(extra map[string]any) map[string]any {
		k := map[string]any{"namespace": "castellan-system", "serviceaccount": map[string]any{"name": "castellan-agent", "uid": "sa-uid"}}
		for key, v := range extra {
			k[key] = v
		}
		return map[string]any{"kubernetes.io": k}
	}
	agent := Caller{Namespace: "castellan-system", ServiceAccount: "castellan-agent"}
	bound := func(pod, uid, node string) Caller {
		c := agent
		c.PodName, c.PodUID, c.NodeName = pod, uid, node
		return c
	}
	ref := func(name, uid string) map[string]any { return map[string]any{"name": name, "uid": uid} }
	tests := []struct {
		name  string
		extra map[string]any
		want  Caller
	}{
		{name: "bound to no pod", want: agent},
		{name: "pod and node", extra: map[string]any{"pod": ref("agent-x7", "pod-uid"), "node": ref("node-a", "node-uid")}, want: bound("agent-x7", "pod-uid", "node-a")},
		{name: "pod without node", extra: map[string]any{"pod": ref("agent-x7", "pod-uid")}, want: bound("agent-x7", "pod-uid", "")},
		{name: "pod without UID", extra: map[string]any{"pod": ref("agent-x7", ""), "node": ref("node-a", "node-uid")}, want: agent},
		{name: "malformed pod name", extra: map[string]any{"pod": ref("Agent X", "pod-uid")}, want: agent},
		{name: "node without pod", extra: map[string]any{"node": ref("node-a", "node-uid")}, want: agent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := j.Authenticate(context.Background(), signClaims(t, jose.ES256, m.key, m.kid, claims, k8s(tt.extra)))
			if err != nil {
				t.Fatal(err)
			}
			if got.Namespace != tt.want.Namespace || got.ServiceAccount != tt.want.ServiceAccount ||
				got.PodName != tt.want.PodName || got.PodUID != tt.want.PodUID || got.NodeName != tt.want.NodeName {
				t.Fatalf("Authenticate = %+v, want %+v", got, tt.want)
			}
		})
	}
}
