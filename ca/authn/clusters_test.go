package authn

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestClustersRouting(t *testing.T) {
	local := &countingAuth{caller: Caller{Namespace: "local", ServiceAccount: "sa", PodName: "p"}}
	east := &countingAuth{caller: Caller{Namespace: "east", ServiceAccount: "sa", PodName: "p"}}
	down := &countingAuth{err: Errorf(ReasonUnavailable, "API server did not answer")}
	c, err := NewClusters("Kubernetes", local, map[string]Authenticator{"east": east, "down": down})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cluster string
		want    Caller
		reason  Reason
		inMsg   string
		checked *countingAuth // the authenticator asked, nil when none is
	}{
		{name: "no cluster is local", cluster: "", want: local.caller, checked: local},
		{name: "local by name", cluster: "Kubernetes", want: local.caller, checked: local},
		{name: "remote", cluster: "east", want: Caller{Namespace: "east", ServiceAccount: "sa", PodName: "p", Cluster: "east"}, checked: east},
		{name: "remote failure keeps its reason and names the cluster", cluster: "down", reason: ReasonUnavailable, inMsg: `cluster "down": API server did not answer`, checked: down},
		{name: "unknown", cluster: "west", reason: ReasonUnknownCluster, inMsg: `ClusterID "west" is not a cluster`},
		{name: "case matters", cluster: "kubernetes", reason: ReasonUnknownCluster, inMsg: `"kubernetes"`},
		{name: "over the limit", cluster: strings.Repeat("x", MaxClusterIDLen+1), reason: ReasonUnknownCluster, inMsg: "over the limit"},
		{name: "control characters", cluster: "east\n", reason: ReasonUnknownCluster, inMsg: "not printable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[*countingAuth]int32{local: local.calls.Load(), east: east.calls.Load(), down: down.calls.Load()}
			got, err := c.AuthenticateCluster(context.Background(), tt.cluster, "token")
			if tt.reason != "" {
				if ReasonOf(err) != tt.reason || !strings.Contains(err.Error(), tt.inMsg) {
					t.Fatalf("AuthenticateCluster = %+v, %v; want reason %s and %q in the message", got, err, tt.reason, tt.inMsg)
				}
			} else if err != nil || got != tt.want {
				t.Fatalf("AuthenticateCluster = %+v, %v; want %+v", got, err, tt.want)
			}
			for a, n := range before {
				wantCalls := n
				if a == tt.checked {
					wantCalls++
				}
				if a.calls.Load() != wantCalls {
					t.Errorf("authenticator %q asked %d times, want %d", a.caller.Namespace, a.calls.Load()-n, wantCalls-n)
				}
			}
		})
	}
	if got, err := c.Authenticate(context.Background(), "token"); err != nil || got != local.caller {
		t.Fatalf("Authenticate = %+v, %v; want the local cluster's caller", got, err)
	}
}

func TestNewClustersRejects(t *testing.T) {
	a := &countingAuth{}
	tests := []struct {
		name   string
		local  string
		auth   Authenticator
		remote map[string]Authenticator
		inMsg  string
	}{
		{name: "empty local", local: "", auth: a, inMsg: "empty cluster ID"},
		{name: "no local authenticator", local: "k", inMsg: "no authenticator"},
		{name: "remote named as local", local: "k", auth: a, remote: map[string]Authenticator{"k": a}, inMsg: "both the local"},
		{name: "empty remote", local: "k", auth: a, remote: map[string]Authenticator{"": a}, inMsg: "empty cluster ID"},
		{name: "nil remote", local: "k", auth: a, remote: map[string]Authenticator{"r": nil}, inMsg: `"r" has no authenticator`},
		{name: "space in ID", local: "k", auth: a, remote: map[string]Authenticator{"r 1": a}, inMsg: "not printable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClusters(tt.local, tt.auth, tt.remote)
			if err == nil || !strings.Contains(err.Error(), tt.inMsg) {
				t.Fatalf("NewClusters = %v, want an error with %q", err, tt.inMsg)
			}
		})
	}
}

// A success cached for one cluster is never served for another: each
// cluster has its own cache.
func TestClustersCachesAreSeparate(t *testing.T) {
	local := &countingAuth{caller: Caller{Namespace: "local", ServiceAccount: "sa"}}
	remote := &countingAuth{err: Errorf(ReasonInvalid, "token not valid in this cluster")}
	lc, err := NewCache(local, CacheConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := NewCache(remote, CacheConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClusters("a", lc, map[string]Authenticator{"b": rc})
	if err != nil {
		t.Fatal(err)
	}
	tok := fakeJWT(`{"exp":4102444800}`)
	if _, err := c.AuthenticateCluster(context.Background(), "a", tok); err != nil {
		t.Fatalf("cluster a: %v", err)
	}
	_, err = c.AuthenticateCluster(context.Background(), "b", tok)
	var ae *Error
	if !errors.As(err, &ae) || ae.Reason != ReasonInvalid {
		t.Fatalf("cluster b after a cached success in a: %v, want invalid_token", err)
	}
	if remote.calls.Load() != 1 {
		t.Fatalf("cluster b's authenticator asked %d times, want 1", remote.calls.Load())
	}
}

// FuzzClusters: whatever ClusterID a caller sends, it reaches the
// authenticator of that cluster and no other, or none at all and is
// refused as an unknown cluster; the message stays bounded.
func FuzzClusters(f *testing.F) {
	for _, s := range []string{"", "Kubernetes", "east", "kubernetes", "east\x00", strings.Repeat("e", 300), strings.Repeat("\x00", 250), strings.Repeat(`"`, 250), "ümlaut"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cluster string) {
		local := &countingAuth{caller: Caller{Namespace: "local", ServiceAccount: "sa"}}
		east := &countingAuth{caller: Caller{Namespace: "east", ServiceAccount: "sa"}}
		c, err := NewClusters("Kubernetes", local, map[string]Authenticator{"east": east})
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.AuthenticateCluster(context.Background(), cluster, "token")
		switch cluster {
		case "", "Kubernetes":
			if err != nil || got.Namespace != "local" || got.Cluster != "" || east.calls.Load() != 0 {
				t.Fatalf("cluster %q: %+v, %v; want the local caller", cluster, got, err)
			}
		case "east":
			if err != nil || got.Namespace != "east" || got.Cluster != "east" || local.calls.Load() != 0 {
				t.Fatalf("cluster %q: %+v, %v; want the east caller", cluster, got, err)
			}
		default:
			if ReasonOf(err) != ReasonUnknownCluster || local.calls.Load()+east.calls.Load() != 0 {
				t.Fatalf("cluster %q: %+v, %v; want unknown_cluster and no check", cluster, got, err)
			}
			if len(err.Error()) > 2*MaxClusterIDLen+200 {
				t.Fatalf("cluster %q: message of %d bytes", cluster, len(err.Error()))
			}
		}
	})
}
