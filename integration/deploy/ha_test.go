package deploy_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/trust"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// caSecret reads the CA Secret with the admin client.
func caSecret(t testing.TB, api *harness.APIServer) *corev1.Secret {
	t.Helper()
	sec, err := api.Client.CoreV1().Secrets(caNamespace).Get(context.Background(), kubestore.DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the CA Secret: %v", err)
	}
	return sec
}

// bundleOf returns the trust bundle in the CA Secret.
func bundleOf(t testing.TB, sec *corev1.Secret) (*x509bundle.Bundle, []*x509.Certificate) {
	t.Helper()
	roots, err := pemfile.ParseCertificates(sec.Data[kubestore.RootCertKey])
	if err != nil {
		t.Fatalf("root-cert.pem in the CA Secret: %v", err)
	}
	return x509bundle.FromX509Authorities(td, roots), roots
}

func poolOf(roots []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range roots {
		p.AddCert(r)
	}
	return p
}

// leaseHolder returns the holder of the CA's Lease.
func leaseHolder(t testing.TB, api *harness.APIServer) string {
	t.Helper()
	l, err := api.Client.CoordinationV1().Leases(caNamespace).Get(context.Background(), kubestore.DefaultLeaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// leaders returns the replicas that say they lead.
func leaders(reps []*replica) []*replica {
	var out []*replica
	for _, r := range reps {
		if r.store.IsLeader() {
			out = append(out, r)
		}
	}
	return out
}

// trustConfigMap returns the bundle in ns's trust ConfigMap, or "".
func trustConfigMap(api *harness.APIServer, ns string) string {
	cm, err := api.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), trust.DefaultConfigMapName, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return cm.Data[trust.DefaultKey]
}

// TestReplicasShareOneRoot runs three replicas, started together with the
// RBAC rules of deploy/ against an API server that enforces them: exactly
// one root is created, every replica issues SVIDs that verify against it,
// and when the leader stops another takes over with the same root.
func TestReplicasShareOneRoot(t *testing.T) {
	api, caClient := startCluster(t)
	w := newWorkload(t, api, "team-a", "web")
	ctx := context.Background()

	var reps []*replica
	for _, name := range []string{"ca-0", "ca-1", "ca-2"} {
		reps = append(reps, launchReplica(t, caClient, name))
	}
	for _, r := range reps {
		r.serve(t, 60*time.Second)
	}

	// Exactly one root: one Secret, one creation, the same root everywhere.
	sec := caSecret(t, api)
	bundle, roots := bundleOf(t, sec)
	if len(roots) != 1 {
		t.Fatalf("the CA Secret holds %d roots, want 1", len(roots))
	}
	var created float64
	for _, r := range reps {
		created += r.counter(t, "castellan_kubestore_roots_created_total")
		if !r.store.Authority().Root().Equal(roots[0]) {
			t.Fatalf("replica %s signs under another root", r.name)
		}
	}
	// A create whose answer was lost (the leader's context ended with its
	// Lease on a loaded machine, after the API server stored the Secret)
	// counts nothing: the replica then reads the Secret like the others.
	// So at most one creation is counted; the one Secret root above is
	// the invariant.
	if created > 1 {
		t.Fatalf("roots created across replicas = %v, want at most 1", created)
	}
	creator := sec.Annotations[kubestore.CreatedByAnnotation]
	if !slices.ContainsFunc(reps, func(r *replica) bool { return r.name == creator }) {
		t.Fatalf("the CA Secret was created by %q, not by one of the replicas", creator)
	}
	t.Logf("root created by %s; serial %s", creator, roots[0].SerialNumber)

	harness.WaitFor(t, 10*time.Second, "one leader", func() bool { return len(leaders(reps)) == 1 })
	leader := leaders(reps)[0]
	if h := leaseHolder(t, api); h != leader.name {
		t.Fatalf("Lease holder = %q, replica %s says it leads", h, leader.name)
	}
	if creator != leader.name {
		t.Errorf("the root was created by %s, but %s leads", creator, leader.name)
	}

	// The replicas watch their Secret by name, which RBAC allows; listing
	// every Secret is refused.
	byName := metav1.ListOptions{FieldSelector: "metadata.name=" + kubestore.DefaultSecretName}
	if _, err := caClient.CoreV1().Secrets(caNamespace).List(ctx, byName); err != nil {
		t.Fatalf("list the CA Secret by name as the CA: %v", err)
	}
	watch, err := caClient.CoreV1().Secrets(caNamespace).Watch(ctx, byName)
	if err != nil {
		t.Fatalf("watch the CA Secret by name as the CA: %v", err)
	}
	watch.Stop()
	if _, err := caClient.CoreV1().Secrets(caNamespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list every Secret as the CA: err = %v, want Forbidden", err)
	}

	// Every replica signs, not only the leader.
	for _, r := range reps {
		if ok, msg := r.ready(t); !ok {
			t.Fatalf("replica %s not ready: %s", r.name, msg)
		}
		if err := issue(ctx, r.client(t, poolOf(roots)), w, bundle); err != nil {
			t.Fatalf("replica %s: %v", r.name, err)
		}
	}

	// The leader publishes the bundle.
	harness.WaitFor(t, 10*time.Second, "the trust ConfigMap in team-a", func() bool {
		return trustConfigMap(api, "team-a") == string(sec.Data[kubestore.RootCertKey])
	})

	// Stop the leader: another replica takes the Lease, the root stays.
	stopped := time.Now()
	leader.stop()
	var rest []*replica
	for _, r := range reps {
		if r != leader {
			rest = append(rest, r)
		}
	}
	harness.WaitFor(t, 15*time.Second, "a new leader", func() bool {
		l := leaders(rest)
		return len(l) == 1 && leaseHolder(t, api) == l[0].name
	})
	newLeader := leaders(rest)[0]
	t.Logf("leader %s stopped; %s took over %v after the stop began (retry period 250ms, lease 3s)", leader.name, newLeader.name, time.Since(stopped).Round(time.Millisecond))
	after := caSecret(t, api)
	if !bytes.Equal(after.Data[kubestore.RootCertKey], sec.Data[kubestore.RootCertKey]) ||
		!bytes.Equal(after.Data[kubestore.CAKeyKey], sec.Data[kubestore.CAKeyKey]) {
		t.Fatal("the CA material changed when the leader stopped")
	}
	for _, r := range rest {
		if !r.store.Authority().Root().Equal(roots[0]) {
			t.Fatalf("replica %s changed root", r.name)
		}
		if err := issue(ctx, r.client(t, poolOf(roots)), w, bundle); err != nil {
			t.Fatalf("replica %s after the leader stopped: %v", r.name, err)
		}
	}

	// The leader's jobs moved with the Lease: the new leader repairs the
	// trust ConfigMap.
	if err := api.Client.CoreV1().ConfigMaps("team-a").Delete(ctx, trust.DefaultConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "the new leader to restore the trust ConfigMap", func() bool {
		return trustConfigMap(api, "team-a") == string(sec.Data[kubestore.RootCertKey])
	})

	// A replica that starts now loads the same root and creates nothing.
	late := startReplica(t, caClient, "ca-3")
	if !late.store.Authority().Root().Equal(roots[0]) || late.counter(t, "castellan_kubestore_roots_created_total") != 0 {
		t.Fatal("a late replica did not load the existing root")
	}
	if err := issue(ctx, late.client(t, poolOf(roots)), w, bundle); err != nil {
		t.Fatalf("late replica: %v", err)
	}
}

// TestSecretLostOrUnreadable checks that a replica never invents a root:
// it reports not ready when the Secret is deleted or cannot be read, a new
// leader does not recreate it, and a replica that starts without access
// waits.
func TestSecretLostOrUnreadable(t *testing.T) {
	api, caClient := startCluster(t)
	ctx := context.Background()

	a := startReplica(t, caClient, "ca-0")
	b := startReplica(t, caClient, "ca-1")
	reps := []*replica{a, b}
	orig := caSecret(t, api)

	// Deleted: both go not ready; neither creates a new root, even after a
	// change of leader.
	if err := api.Client.CoreV1().Secrets(caNamespace).Delete(ctx, kubestore.DefaultSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range reps {
		harness.WaitFor(t, 10*time.Second, r.name+" not ready", func() bool { ok, _ := r.ready(t); return !ok })
		_, msg := r.ready(t)
		if !strings.Contains(msg, "deleted") {
			t.Errorf("replica %s /readyz = %q, want it to say the Secret was deleted", r.name, msg)
		}
	}
	harness.WaitFor(t, 10*time.Second, "a leader", func() bool { return len(leaders(reps)) == 1 })
	old := leaders(reps)[0]
	old.stop()
	other := a
	if old == a {
		other = b
	}
	harness.WaitFor(t, 15*time.Second, other.name+" to lead", other.store.IsLeader)
	time.Sleep(2 * time.Second) // let the new leader act on the missing Secret
	if _, err := api.Client.CoreV1().Secrets(caNamespace).Get(ctx, kubestore.DefaultSecretName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after deletion and a change of leader, Get = %v; want NotFound (no new root)", err)
	}

	// Restored: ready again, same root.
	restored := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: orig.Name, Namespace: orig.Namespace, Labels: orig.Labels, Annotations: orig.Annotations}, Type: orig.Type, Data: orig.Data}
	if _, err := api.Client.CoreV1().Secrets(caNamespace).Create(ctx, restored, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, other.name+" ready again", func() bool { ok, _ := other.ready(t); return ok })

	// Unreadable: without its RoleBinding the replica is forbidden to read
	// the Secret, and says so.
	rb, err := api.Client.RbacV1().RoleBindings(caNamespace).Get(ctx, "castellan-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Client.RbacV1().RoleBindings(caNamespace).Delete(ctx, rb.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 15*time.Second, other.name+" not ready while forbidden", func() bool {
		ok, msg := other.ready(t)
		return !ok && strings.Contains(msg, "cannot read")
	})

	// A replica starting now cannot read the Secret: it waits, not ready,
	// and makes no root of its own.
	fresh := launchReplica(t, caClient, "ca-2")
	time.Sleep(3 * time.Second)
	if ok, msg := fresh.store.Ready(); ok || fresh.store.Authority() != nil {
		t.Fatalf("a replica that cannot read the Secret is ready (%q) or has material", msg)
	}
	if fresh.counter(t, "castellan_kubestore_roots_created_total") != 0 {
		t.Fatal("a replica that cannot read the Secret created a root")
	}

	// Access restored: both serve the original root.
	rb.ResourceVersion, rb.UID = "", ""
	if _, err := api.Client.RbacV1().RoleBindings(caNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 15*time.Second, other.name+" ready after access returned", func() bool { ok, _ := other.ready(t); return ok })
	fresh.serve(t, 15*time.Second)
	_, roots := bundleOf(t, orig)
	for _, r := range []*replica{other, fresh} {
		if !r.store.Authority().Root().Equal(roots[0]) {
			t.Fatalf("replica %s does not sign under the original root", r.name)
		}
	}
	if sec := caSecret(t, api); !bytes.Equal(sec.Data[kubestore.CAKeyKey], orig.Data[kubestore.CAKeyKey]) {
		t.Fatal("the CA key changed")
	}
}

// TestStopReplicaUnderLoad stops a replica (the leader) while clients send
// CSRs to all replicas. A client sees at most errors that a retry on
// another replica fixes, and every certificate verifies.
func TestStopReplicaUnderLoad(t *testing.T) {
	api := harness.StartAPIServer(t)
	installCA(t, api)
	_, caClient := clientAs(t, api, caNamespace, caSA)

	var reps []*replica
	for _, name := range []string{"ca-0", "ca-1", "ca-2"} {
		reps = append(reps, launchReplica(t, caClient, name))
	}
	for _, r := range reps {
		r.serve(t, 60*time.Second)
	}
	bundle, roots := bundleOf(t, caSecret(t, api))
	pool := poolOf(roots)
	var workloads []workload
	for _, sa := range []string{"web", "db", "cache", "queue"} {
		workloads = append(workloads, newWorkload(t, api, "shop", sa))
	}
	var clients [][]clientRef // per worker: one client per replica
	const workers = 8
	for range workers {
		var cs []clientRef
		for _, r := range reps {
			cs = append(cs, clientRef{name: r.name, c: r.client(t, pool)})
		}
		clients = append(clients, cs)
	}
	harness.WaitFor(t, 10*time.Second, "a leader", func() bool { return len(leaders(reps)) == 1 })
	victim := leaders(reps)[0]

	const (
		total      = 2000 // successful issuances to reach
		stopAt     = total / 3
		maxTries   = 3
		timeBudget = 90 * time.Second
	)
	var (
		ok, transient, failed, badCerts atomic.Int64
		next                            atomic.Int64
		stopOnce                        sync.Once
		stopped                         = make(chan struct{})
		mu                              sync.Mutex
		firstErrs                       []string
		byCode                          = map[codes.Code]int{}
	)
	ctx, cancel := context.WithTimeout(context.Background(), timeBudget)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for ctx.Err() == nil && ok.Load() < total {
				n := next.Add(1)
				w := workloads[int(n)%len(workloads)]
				var err error
				for try := range maxTries {
					ref := clients[i][(int(n)+try)%len(reps)]
					rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
					err = issue(rctx, ref.c, w, bundle)
					rcancel()
					if err == nil {
						break
					}
					if isVerifyError(err) {
						badCerts.Add(1)
						break
					}
					transient.Add(1)
					mu.Lock()
					byCode[status.Code(err)]++
					if len(firstErrs) < 5 {
						firstErrs = append(firstErrs, ref.name+": "+err.Error())
					}
					mu.Unlock()
				}
				switch {
				case err == nil:
					if ok.Add(1) == stopAt {
						stopOnce.Do(func() {
							go func() { victim.stop(); close(stopped) }()
						})
					}
				case !isVerifyError(err) && ctx.Err() == nil:
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the replica did not stop")
	}
	t.Logf("issued %d in %v (%.0f/s, %d workers, each SVID verified), transient errors %d (each retried on another replica), failed after %d tries %d, bad certificates %d; replica %s (the leader) stopped after %d",
		ok.Load(), elapsed.Round(time.Millisecond), float64(ok.Load())/elapsed.Seconds(), workers, transient.Load(), maxTries, failed.Load(), badCerts.Load(), victim.name, stopAt)
	t.Logf("transient errors by gRPC code: %v", byCode)
	for _, e := range firstErrs {
		t.Logf("transient: %s", e)
	}
	if badCerts.Load() != 0 {
		t.Fatalf("%d certificates failed verification", badCerts.Load())
	}
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed even after %d tries", failed.Load(), maxTries)
	}
	if ok.Load() < total {
		t.Fatalf("only %d of %d issuances within %v", ok.Load(), total, timeBudget)
	}
}

type clientRef struct {
	name string
	c    *caclient.Client
}

// isVerifyError reports whether err came from checking an issued chain,
// not from the call.
func isVerifyError(err error) bool {
	var v verifyError
	return errors.As(err, &v)
}
