package sds_test

import (
	"context"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

func TestStreamSecrets(t *testing.T) {
	tests := []scenario{
		{"first response", func(t *testing.T, e *env) {
			s := e.openSotW()
			if err := s.Subscribe(sds.DefaultSecretName); err != nil {
				t.Fatal(err)
			}
			r := s.Await()
			snap := e.current()
			if r.Version != snap.SVID.Version || r.Nonce == "" {
				t.Fatalf("first response: version %q nonce %q, want version %q and a nonce", r.Version, r.Nonce, snap.SVID.Version)
			}
			if len(r.Secrets) != 1 {
				t.Fatalf("got %d secrets, want 1", len(r.Secrets))
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], snap.SVID)
		}},
		{"ACK then push on rotation", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Subscribe(sds.DefaultSecretName)
			first := s.AwaitACK()
			e.waitMetric("castellan_sds_acks_total", "sotw", 1)
			s.None()
			svid := e.rotate()
			r := s.AwaitACK()
			if r.Version == first.Version || r.Nonce == first.Nonce {
				t.Fatalf("rotation reused version %q / nonce %q", r.Version, r.Nonce)
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
			s.None()
		}},
		{"unsubscribe", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Subscribe(sds.DefaultSecretName)
			s.AwaitACK()
			if err := s.Subscribe(); err != nil {
				t.Fatal(err)
			}
			e.waitMetric("castellan_sds_acks_total", "sotw", 2)
			e.rotate()
			s.None()
			// Subscribing again is answered with the current secret.
			svid := e.rotate()
			s.Subscribe(sds.DefaultSecretName)
			checkDefault(t, s.AwaitACK().Secrets[sds.DefaultSecretName], svid)
			s.None()
		}},
		{"two resources on one stream", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
			r := s.AwaitACK()
			snap := e.current()
			checkDefault(t, r.Secrets[sds.DefaultSecretName], snap.SVID)
			checkRoot(t, r.Secrets[sds.RootCASecretName], snap.Bundle)
			// State of the world: each response holds both.
			svid := e.rotate()
			r = s.AwaitACK()
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
			checkRoot(t, r.Secrets[sds.RootCASecretName], snap.Bundle)
			b := e.newRoot()
			r = s.AwaitACK()
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
			checkRoot(t, r.Secrets[sds.RootCASecretName], b)
			s.None()
		}},
		{"unknown name gets an error and the stream stays usable", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Subscribe(sds.DefaultSecretName, "file-cert:/etc/ssl/x.pem")
			r := s.AwaitACK()
			st := r.Errors["file-cert:/etc/ssl/x.pem"]
			if st == nil || codes.Code(st.GetCode()) != codes.NotFound || !strings.Contains(st.GetMessage(), `"file-cert:/etc/ssl/x.pem"`) {
				t.Fatalf("resource error = %v, want NOT_FOUND naming the resource", st)
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], e.current().SVID)
			s.None()
			svid := e.rotate()
			checkDefault(t, s.AwaitACK().Secrets[sds.DefaultSecretName], svid)
			// Only the unknown name: an error, nothing else.
			s.Subscribe("nope")
			r = s.AwaitACK()
			if len(r.Secrets) != 0 || r.Errors["nope"] == nil {
				t.Fatalf("got %d secrets and errors %v", len(r.Secrets), r.Errors)
			}
			s.Subscribe(sds.RootCASecretName)
			checkRoot(t, s.AwaitACK().Secrets[sds.RootCASecretName], e.current().Bundle)
		}},
		{"expired certificate is withdrawn", func(t *testing.T, e *env) {
			e.store.SetSVID(e.ca.Issue(t, testID, 2*time.Second))
			s := e.openSotW()
			s.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
			if r := s.AwaitACK(); len(r.Secrets) != 2 {
				t.Fatalf("got %d secrets, want 2", len(r.Secrets))
			}
			r := s.AwaitACK()
			if _, ok := r.Secrets[sds.DefaultSecretName]; ok || r.Secrets[sds.RootCASecretName] == nil {
				t.Fatalf("after expiry got secrets %v, want only ROOTCA", keys(r.Secrets))
			}
			svid := e.rotate()
			checkDefault(t, s.AwaitACK().Secrets[sds.DefaultSecretName], svid)
		}},
		{"wrong type URL ends the stream", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: []string{"x"}})
			select {
			case err := <-s.Err():
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Cluster") {
					t.Fatalf("stream ended with %v, want InvalidArgument naming the type", err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("stream stayed open")
			}
		}},
		{"too many names end the stream", func(t *testing.T, e *env) {
			s := e.openSotW()
			s.Subscribe(make([]string, sds.MaxResourceNames+1)...)
			select {
			case err := <-s.Err():
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("stream ended with %v, want InvalidArgument", err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("stream stayed open")
			}
		}},
	}
	runScenarios(t, append(tests, sharedScenarios("sotw", (*env).openSotW, staleNACK)...))
}

func TestFetchSecrets(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	r, err := e.client.FetchSecrets(ctx, sds.DefaultSecretName, sds.RootCASecretName, "nope")
	if err != nil {
		t.Fatal(err)
	}
	if r.Invalid != nil {
		t.Fatal(r.Invalid)
	}
	snap := e.current()
	checkDefault(t, r.Secrets[sds.DefaultSecretName], snap.SVID)
	checkRoot(t, r.Secrets[sds.RootCASecretName], snap.Bundle)
	if r.Errors["nope"] == nil {
		t.Fatal("no error for unknown name")
	}

	got, err := sdsclient.Fetch(ctx, e.socket, sds.DefaultSecretName, sds.RootCASecretName)
	if err != nil {
		t.Fatal(err)
	}
	checkDefault(t, got[sds.DefaultSecretName], snap.SVID)
	checkRoot(t, got[sds.RootCASecretName], snap.Bundle)

	if _, err := sdsclient.Fetch(ctx, e.socket, "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Fetch of unknown name: err = %v", err)
	}
}

func TestFetchBeforeCertificate(t *testing.T) {
	empty := newEmptyEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := empty.client.FetchSecrets(ctx, sds.DefaultSecretName)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("FetchSecrets with no SVID: %v, want Unavailable", err)
	}
	// A stream waits, then gets the first SVID.
	s := empty.openSotW()
	s.Subscribe(sds.DefaultSecretName)
	s.None()
	svid := empty.rotate()
	checkDefault(t, s.AwaitACK().Secrets[sds.DefaultSecretName], svid)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
