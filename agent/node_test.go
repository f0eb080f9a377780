package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// nodeFakes stand for the node: which pod the next caller is in, and
// which service accounts have running pods. The CA's side is a fake
// authorizer that grants every target with a running pod and counts the
// grants by target.
type nodeFakes struct {
	mu      sync.Mutex
	caller  attest.Workload
	refusal error
	running map[string]bool // "ns/sa"
	changed chan struct{}
	grants  map[string]int // SPIFFE ID -> CSRs granted
}

func newNodeFakes() *nodeFakes {
	return &nodeFakes{running: map[string]bool{}, changed: make(chan struct{}), grants: map[string]int{}}
}

func (f *nodeFakes) Attest(_ context.Context, p attest.PeerCred) (attest.Workload, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p.PID <= 0 {
		return attest.Workload{}, errors.New("no peer credentials reached the attestor")
	}
	if f.refusal != nil {
		return attest.Workload{}, f.refusal
	}
	return f.caller, nil
}

func (f *nodeFakes) HasServiceAccount(ns, sa string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[ns+"/"+sa]
}

func (f *nodeFakes) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *nodeFakes) AuthorizeImpersonation(_ context.Context, caller authn.Caller, target spiffeid.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running[strings.TrimPrefix(strings.Replace(target.Path(), "/sa/", "/", 1), "/ns/")] {
		return fmt.Errorf("no running pod for %s", target)
	}
	f.grants[target.String()]++
	return nil
}

// be makes the next callers processes of a pod running as ns/sa.
func (f *nodeFakes) be(ns, sa string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusal = nil
	f.caller = attest.Workload{PID: 1, Namespace: ns, ServiceAccount: sa, PodName: sa + "-0", PodUID: "uid-" + sa}
}

func (f *nodeFakes) setRunning(ns, sa string, running bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running[ns+"/"+sa] = running
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *nodeFakes) grantsFor(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.grants[id]
}

func startNodeAgent(t *testing.T, maxIdentities int) (*testAgent, *nodeFakes) {
	t.Helper()
	f := newNodeFakes()
	ca := startCAWith(t, f)
	a := startAgent(t, ca, func(c *agent.Config) {
		c.Attestation = agent.AttestationNode
		c.Attestor = f
		c.Pods = f
		c.OutputDir = ""
		c.MaxIdentities = maxIdentities
	})
	return a, f
}

// fetchID fetches the default secret over SDS on a new connection and
// returns the SPIFFE ID of its leaf.
func fetchID(t *testing.T, a *testAgent) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := sdsclient.New(a.cfg.SDSSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for {
		secrets, err := c.Fetch(ctx, sds.DefaultSecretName)
		if status.Code(errors.Unwrap(err)) == codes.Unavailable && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond) // not issued yet
			continue
		}
		if err != nil {
			return "", err
		}
		chain, _, err := sdsclient.TLSCertificate(secrets[sds.DefaultSecretName])
		if err != nil {
			t.Fatal(err)
		}
		return chain[0].URIs[0].String(), nil
	}
}

func TestNodeAttestationServesEachCallerItsOwnIdentity(t *testing.T) {
	a, f := startNodeAgent(t, 0)
	f.setRunning("shop", "web", true)
	f.setRunning("shop", "db", true)

	f.be("shop", "web")
	if id, err := fetchID(t, a); err != nil || id != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("pod of shop/web got %q, %v", id, err)
	}
	f.be("shop", "db")
	if id, err := fetchID(t, a); err != nil || id != "spiffe://cluster.local/ns/shop/sa/db" {
		t.Fatalf("pod of shop/db got %q, %v", id, err)
	}
	// A second pod of shop/web shares its SVID: no second CSR.
	f.be("shop", "web")
	if id, err := fetchID(t, a); err != nil || id != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("second pod of shop/web got %q, %v", id, err)
	}
	if n := f.grantsFor("spiffe://cluster.local/ns/shop/sa/web"); n != 1 {
		t.Fatalf("%d CSRs for shop/web, want 1", n)
	}

	// The Workload API serves the same identity, and it verifies.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	svid, err := spiffeapi.FetchX509SVID(ctx, spiffeapi.WithAddr("unix://"+a.cfg.SDSSocket))
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := spiffeapi.FetchX509Bundles(ctx, spiffeapi.WithAddr("unix://"+a.cfg.SDSSocket))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil || svid.ID.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("Workload API SVID %s: %v", svid.ID, err)
	}
	if got := a.metric(t, "castellan_agent_identities", ""); got != 2 {
		t.Fatalf("castellan_agent_identities = %v, want 2", got)
	}
}

func TestNodeAttestationRefusals(t *testing.T) {
	a, f := startNodeAgent(t, 1)
	f.setRunning("shop", "web", true)
	f.setRunning("shop", "db", true)

	tests := []struct {
		name   string
		set    func()
		code   codes.Code
		reason string
		msg    string
	}{
		{"not in a pod", func() {
			f.mu.Lock()
			f.refusal = &attest.Error{Reason: attest.ReasonNotInPod, Msg: "process 1 runs in no pod's cgroup"}
			f.mu.Unlock()
		}, codes.PermissionDenied, string(attest.ReasonNotInPod), "no pod's cgroup"},
		{"pod of another node", func() {
			f.mu.Lock()
			f.refusal = &attest.Error{Reason: attest.ReasonOtherNode, Msg: "bound to node \"n2\""}
			f.mu.Unlock()
		}, codes.PermissionDenied, string(attest.ReasonOtherNode), "n2"},
		{"service account with no running pod", func() { f.be("shop", "gone") }, codes.PermissionDenied, "no_running_pod", "no running pod of service account shop/gone"},
		{"first identity", func() { f.be("shop", "web") }, codes.OK, "", ""},
		{"over the identity cap", func() { f.be("shop", "db") }, codes.ResourceExhausted, "identity_cap", "the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.set()
			before := a.metric(t, "castellan_agent_callers_refused_total", tt.reason)
			_, err := fetchID(t, a)
			if got := status.Code(errors.Unwrap(err)); got != tt.code || (tt.msg != "" && !strings.Contains(err.Error(), tt.msg)) {
				t.Fatalf("got %v (%v), want %v with %q", got, err, tt.code, tt.msg)
			}
			if tt.reason != "" {
				if after := a.metric(t, "castellan_agent_callers_refused_total", tt.reason); after != before+1 {
					t.Fatalf("refusals{reason=%s} went from %v to %v", tt.reason, before, after)
				}
			}
		})
	}
	if n := f.grantsFor("spiffe://cluster.local/ns/shop/sa/db") + f.grantsFor("spiffe://cluster.local/ns/shop/sa/gone"); n != 0 {
		t.Fatalf("%d CSRs for refused callers", n)
	}
}

func TestNodeAttestationWithdrawsWhenThePodsAreGone(t *testing.T) {
	a, f := startNodeAgent(t, 0)
	f.setRunning("shop", "web", true)
	f.be("shop", "web")
	if _, err := fetchID(t, a); err != nil {
		t.Fatal(err)
	}

	// An SDS delta stream and a Workload API stream of shop/web.
	c, err := sdsclient.New(a.cfg.SDSSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	d, err := c.DeltaStream(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
	if r, err := d.Next(); err != nil || r.Secrets[sds.DefaultSecretName] == nil {
		t.Fatalf("first delta response: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+a.cfg.SDSSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wctx := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	ws, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(wctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatal(err)
	}

	grants := f.grantsFor("spiffe://cluster.local/ns/shop/sa/web")
	f.setRunning("shop", "web", false)
	r, err := d.Next()
	if err != nil || len(r.Removed) != 1 || r.Removed[0] != sds.DefaultSecretName {
		t.Fatalf("delta after the last pod left: removed %v, %v", r.Removed, err)
	}
	if _, err := ws.Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "withdrawn") {
		t.Fatalf("Workload API stream after the last pod left: %v", err)
	}
	testpoll.Until(t, "no identity left", func() bool { return a.metric(t, "castellan_agent_identities", "") == 0 })
	a.RotateNow()
	time.Sleep(200 * time.Millisecond) // a rotation, if one were left, would have sent its CSR
	if n := f.grantsFor("spiffe://cluster.local/ns/shop/sa/web"); n != grants {
		t.Fatalf("shop/web renewed after its pods left: %d CSRs, was %d", n, grants)
	}
	if got := a.metric(t, "castellan_agent_identities_withdrawn_total", ""); got != 1 {
		t.Fatalf("withdrawn = %v, want 1", got)
	}
}

// unlistedPods is a PodSet that has not listed the node's pods yet.
type unlistedPods struct{ *nodeFakes }

func (unlistedPods) Synced() bool { return false }

func TestNodeAttestationNotReadyBeforePodsListed(t *testing.T) {
	f := newNodeFakes()
	ca := startCAWith(t, f)
	a := startAgent(t, ca, func(c *agent.Config) {
		c.Attestation = agent.AttestationNode
		c.Attestor = f
		c.Pods = unlistedPods{f}
		c.OutputDir = ""
	})
	testpoll.Until(t, "the trust bundle", func() bool { snap, _ := a.Store().Load(); return snap.Bundle != nil })
	if ok, msg := a.Ready(); ok || !strings.Contains(msg, "not listed yet") {
		t.Fatalf("Ready() = %v, %q before the pods are listed", ok, msg)
	}
}
