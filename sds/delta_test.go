package sds_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/castellan-mesh/castellan/sds"
)

func TestDeltaSecrets(t *testing.T) {
	tests := []scenario{
		{"first response", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			if err := d.Subscribe(sds.DefaultSecretName); err != nil {
				t.Fatal(err)
			}
			r := d.Await()
			snap := e.current()
			if r.Nonce == "" || r.Versions[sds.DefaultSecretName] != snap.SVID.Version {
				t.Fatalf("first response: nonce %q versions %v, want a nonce and %q", r.Nonce, r.Versions, snap.SVID.Version)
			}
			if len(r.Secrets) != 1 {
				t.Fatalf("got %d secrets, want 1", len(r.Secrets))
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], snap.SVID)
		}},
		{"ACK then push on rotation", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName)
			first := d.AwaitACK()
			e.waitMetric("castellan_sds_acks_total", "delta", 1)
			d.None()
			svid := e.rotate()
			r := d.AwaitACK()
			if r.Nonce == first.Nonce || r.Versions[sds.DefaultSecretName] != svid.Version {
				t.Fatalf("rotation: nonce %q versions %v", r.Nonce, r.Versions)
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
			if got := d.Known()[sds.DefaultSecretName]; got != svid.Version {
				t.Fatalf("client holds version %q, want %q", got, svid.Version)
			}
			d.None()
		}},
		{"unsubscribe", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
			d.AwaitACK()
			d.Unsubscribe(sds.DefaultSecretName)
			// An unknown name is answered with an error: a barrier
			// showing the unsubscribe was processed.
			d.Subscribe("barrier")
			if r := d.AwaitACK(); r.Errors["barrier"] == nil {
				t.Fatalf("expected an error for the barrier name, got %v", keys(r.Secrets))
			}
			e.rotate()
			d.None()
			// Still subscribed to ROOTCA.
			b := e.newRoot()
			r := d.AwaitACK()
			if len(r.Secrets) != 1 {
				t.Fatalf("got secrets %v, want only ROOTCA", keys(r.Secrets))
			}
			checkRoot(t, r.Secrets[sds.RootCASecretName], b)
			svid := e.rotate()
			d.Subscribe(sds.DefaultSecretName)
			checkDefault(t, d.AwaitACK().Secrets[sds.DefaultSecretName], svid)
			d.None()
		}},
		{"two resources on one stream", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
			r := d.AwaitACK()
			snap := e.current()
			checkDefault(t, r.Secrets[sds.DefaultSecretName], snap.SVID)
			checkRoot(t, r.Secrets[sds.RootCASecretName], snap.Bundle)
			// Incremental: only what changed.
			svid := e.rotate()
			r = d.AwaitACK()
			if len(r.Secrets) != 1 {
				t.Fatalf("rotation sent %v, want only default", keys(r.Secrets))
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
			b := e.newRoot()
			r = d.AwaitACK()
			if len(r.Secrets) != 1 {
				t.Fatalf("bundle change sent %v, want only ROOTCA", keys(r.Secrets))
			}
			checkRoot(t, r.Secrets[sds.RootCASecretName], b)
			d.None()
		}},
		{"unknown name gets an error and the stream stays usable", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName, "nope")
			r := d.AwaitACK()
			st := r.Errors["nope"]
			if st == nil || codes.Code(st.GetCode()) != codes.NotFound || !strings.Contains(st.GetMessage(), `"nope"`) {
				t.Fatalf("resource error = %v, want NOT_FOUND naming the resource", st)
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], e.current().SVID)
			d.None()
			svid := e.rotate()
			r = d.AwaitACK()
			if len(r.Errors) != 0 {
				t.Fatalf("error repeated: %v", r.Errors)
			}
			checkDefault(t, r.Secrets[sds.DefaultSecretName], svid)
		}},
		{"reconnect with the versions held", func(t *testing.T, e *env) {
			snap := e.current()
			d := e.openDelta(map[string]string{sds.DefaultSecretName: snap.SVID.Version, sds.RootCASecretName: "old"})
			d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
			r := d.AwaitACK()
			if len(r.Secrets) != 1 {
				t.Fatalf("got %v, want only ROOTCA (default is current)", keys(r.Secrets))
			}
			checkRoot(t, r.Secrets[sds.RootCASecretName], snap.Bundle)
			d.None()
			svid := e.rotate()
			checkDefault(t, d.AwaitACK().Secrets[sds.DefaultSecretName], svid)
		}},
		{"subscribing again resends", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName)
			first := d.AwaitACK()
			d.Subscribe(sds.DefaultSecretName)
			r := d.AwaitACK()
			if r.Versions[sds.DefaultSecretName] != first.Versions[sds.DefaultSecretName] {
				t.Fatalf("version changed without a rotation")
			}
		}},
		{"wildcard", func(t *testing.T, e *env) {
			d := e.openDelta(nil)
			d.Subscribe("*")
			r := d.AwaitACK()
			got := keys(r.Secrets)
			slices.Sort(got)
			if !slices.Equal(got, []string{sds.RootCASecretName, sds.DefaultSecretName}) {
				t.Fatalf("wildcard got %v", got)
			}
		}},
		{"expired certificate is removed", func(t *testing.T, e *env) {
			e.store.SetSVID(e.ca.Issue(t, testID, 2*time.Second))
			d := e.openDelta(nil)
			d.Subscribe(sds.DefaultSecretName)
			d.AwaitACK()
			r := d.AwaitACK()
			if !slices.Equal(r.Removed, []string{sds.DefaultSecretName}) || len(r.Secrets) != 0 {
				t.Fatalf("after expiry: removed %v, secrets %v", r.Removed, keys(r.Secrets))
			}
			if _, ok := d.Known()[sds.DefaultSecretName]; ok {
				t.Fatal("client still holds the expired secret")
			}
			svid := e.rotate()
			checkDefault(t, d.AwaitACK().Secrets[sds.DefaultSecretName], svid)
		}},
	}
	runScenarios(t, append(tests, sharedScenarios("delta", func(e *env) *delta { return e.openDelta(nil) }, staleDeltaNACK)...))
}
