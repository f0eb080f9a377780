// Package attest_test attests real processes in real cgroups, named as the
// kubelet names them, against pods of a real API server: the agent's
// workload attestation with nothing faked but the kubelet itself.
package attest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/attest/podindex"
	"github.com/castellan-mesh/castellan/integration/harness"
)

const (
	nodeA       = "node-a"
	nodeB       = "node-b"
	ns          = "shop"
	waitTimeout = 30 * time.Second
)

// agent is the attesting side: a gRPC server on a Unix socket with
// attest.Credentials, whose every call is attested first, as the node
// agent does. Results are kept by pid.
type agent struct {
	sock     string
	attestor *attest.Attestor
	reg      *prometheus.Registry

	mu      sync.Mutex
	results map[int32]result
}

type result struct {
	w   attest.Workload
	err error
}

func startAgent(t *testing.T, pods attest.PodLookup) *agent {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := attest.New(attest.Config{Pods: pods, NodeName: nodeA, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ag := &agent{sock: filepath.Join(t.TempDir(), "agent.sock"), attestor: a, reg: reg, results: map[int32]result{}}
	l, err := net.Listen("unix", ag.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(attest.Credentials()), grpc.UnaryInterceptor(ag.intercept))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return ag
}

func (ag *agent) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	p, ok := attest.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "no peer credentials")
	}
	w, err := ag.attestor.Attest(ctx, p)
	ag.mu.Lock()
	ag.results[p.PID] = result{w, err}
	ag.mu.Unlock()
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return h(ctx, req)
}

func (ag *agent) result(t *testing.T, pid int) result {
	t.Helper()
	ag.mu.Lock()
	defer ag.mu.Unlock()
	r, ok := ag.results[int32(pid)]
	if !ok {
		t.Fatalf("no call from pid %d was attested", pid)
	}
	return r
}

// proc is a child process of the test, run as a helper (see TestMain).
type proc struct{ *harness.Child }

func startProc(t testing.TB, mode string) *proc {
	t.Helper()
	return &proc{harness.StartChild(t, "^$", helperEnv+"="+mode)}
}

func (p *proc) pid() int { return p.Pid() }

// connect has the process connect to sock and returns the line it prints.
func (p *proc) connect(t testing.TB, sock string) string {
	t.Helper()
	p.Send(t, sock)
	return p.Next(t, time.Minute)
}

// stop kills the process and reaps it, freeing its pid.
func (p *proc) stop() { p.Stop() }

// pod is a pod of the API server and the cgroups of one of its
// containers.
type pod struct {
	*corev1.Pod
	container string
	layouts   []harness.CgroupLayout
}

// enter puts process pid into the pod's container cgroup.
func (p pod) enter(t *testing.T, pid int) {
	t.Helper()
	harness.JoinPodCgroup(t, pid, string(p.UID), p.container, p.layouts...)
}

// cluster is the API server with pods on two nodes, and node A's pod
// index.
type cluster struct {
	api     *harness.APIServer
	index   *podindex.Index
	layouts []harness.CgroupLayout
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	layouts := harness.CgroupLayouts(t)
	t.Logf("cgroup layouts on this machine: %v", layouts)
	api := harness.StartAPIServer(t)
	for _, sa := range []string{"web", "db", "batch", "legacy"} {
		api.CreateServiceAccount(t, ns, sa)
	}
	index, err := podindex.New(api.Config, nodeA)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	index.Start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, waitTimeout)
	defer wcancel()
	if err := index.WaitForSync(wctx); err != nil {
		t.Fatal(err)
	}
	return &cluster{api: api, index: index, layouts: layouts}
}

// createPod creates a pod and waits until node A's index has its state.
// Its container's cgroups use the given layouts, or all of this
// machine's.
func (c *cluster) createPod(t *testing.T, name, sa, node string, phase corev1.PodPhase, layouts ...harness.CgroupLayout) pod {
	t.Helper()
	p := c.api.CreatePod(t, ns, name, sa, node, phase)
	if node == nodeA {
		c.waitPod(t, string(p.UID), func(ap attest.Pod, ok bool) bool { return ok && ap.Phase == attest.PodPhase(p.Status.Phase) })
	}
	if len(layouts) == 0 {
		layouts = c.layouts
	}
	return pod{Pod: p, container: harness.NewContainerID(t), layouts: layouts}
}

// waitPod waits until the index's view of the pod satisfies cond.
func (c *cluster) waitPod(t *testing.T, uid string, cond func(attest.Pod, bool) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond(c.index.PodByUID(uid)) {
		if time.Now().After(deadline) {
			p, ok := c.index.PodByUID(uid)
			t.Fatalf("pod %s: the index still has %+v (present %v)", uid, p, ok)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// callFrom starts a process, puts it in pod p, has it call the agent and
// returns its pid and what the agent made of it.
func callFrom(t *testing.T, ag *agent, p pod) (int, result) {
	t.Helper()
	pr := startProc(t, modeCall)
	p.enter(t, pr.pid())
	return pr.pid(), ag.call(t, pr)
}

func TestAttestRealProcesses(t *testing.T) {
	c := startCluster(t)
	ag := startAgent(t, c.index)

	web := c.createPod(t, "web-0", "web", nodeA, corev1.PodRunning)
	db := c.createPod(t, "db-0", "db", nodeA, corev1.PodRunning)
	elsewhere := c.createPod(t, "web-1", "web", nodeB, corev1.PodRunning)
	done := c.createPod(t, "batch-0", "batch", nodeA, corev1.PodSucceeded)
	pending := c.createPod(t, "batch-1", "batch", nodeA, corev1.PodPending)

	t.Run("pods", func(t *testing.T) {
		for _, tc := range []struct {
			pod *pod
			sa  string
		}{{&web, "web"}, {&db, "db"}} {
			for _, layout := range c.layouts {
				p := *tc.pod
				p.layouts = []harness.CgroupLayout{layout}
				t.Run(tc.sa+" "+string(layout), func(t *testing.T) {
					pid, r := callFrom(t, ag, p)
					if r.err != nil {
						t.Fatalf("refused: %v", r.err)
					}
					want := attest.Workload{PID: int32(pid), PodUID: string(p.UID), Namespace: ns, PodName: p.Name,
						ServiceAccount: tc.sa, ContainerID: p.container, NodeName: nodeA}
					if r.w != want {
						t.Fatalf("attested %+v, want %+v", r.w, want)
					}
				})
			}
		}
		if len(c.layouts) > 1 {
			t.Run("all hierarchies agree", func(t *testing.T) {
				_, r := callFrom(t, ag, web)
				if r.err != nil || r.w.ServiceAccount != "web" {
					t.Fatalf("attested %+v, %v", r.w, r.err)
				}
			})
		}
	})

	type refusal struct {
		name   string
		pod    *pod
		enter  func(t *testing.T, pid int)
		reason attest.Reason
	}
	refusals := []refusal{
		{name: "process in no pod", reason: attest.ReasonNotInPod},
		{name: "pod on another node", pod: &elsewhere, reason: attest.ReasonUnknownPod},
		{name: "terminated pod", pod: &done, reason: attest.ReasonPodNotRunning},
		{name: "pending pod", pod: &pending, reason: attest.ReasonPodNotRunning},
	}
	if len(c.layouts) > 1 {
		// One hierarchy says web, the other db.
		w, d := web, db
		w.layouts, d.layouts = c.layouts[:1], c.layouts[1:2]
		refusals = append(refusals, refusal{
			name:   "hierarchies name two pods",
			enter:  func(t *testing.T, pid int) { w.enter(t, pid); d.enter(t, pid) },
			reason: attest.ReasonAmbiguousCgroup,
		})
	} else {
		t.Logf("one cgroup hierarchy only (%v): hierarchies that disagree are not tried", c.layouts)
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			pr := startProc(t, modeCall)
			switch {
			case tc.enter != nil:
				tc.enter(t, pr.pid())
			case tc.pod != nil:
				tc.pod.enter(t, pr.pid())
			}
			checkRefused(t, ag.call(t, pr), tc.reason)
		})
	}

	t.Run("deleted pod", func(t *testing.T) {
		gone := c.createPod(t, "web-2", "web", nodeA, corev1.PodRunning)
		pr := startProc(t, modeCall)
		gone.enter(t, pr.pid())
		c.api.DeletePod(t, ns, gone.Name, false)
		c.waitPod(t, string(gone.UID), func(_ attest.Pod, ok bool) bool { return !ok })
		checkRefused(t, ag.call(t, pr), attest.ReasonUnknownPod)
	})

	t.Run("terminating pod", func(t *testing.T) {
		going := c.createPod(t, "web-3", "web", nodeA, corev1.PodRunning)
		pr := startProc(t, modeCall)
		going.enter(t, pr.pid())
		c.api.DeletePod(t, ns, going.Name, true)
		c.waitPod(t, string(going.UID), func(p attest.Pod, ok bool) bool { return ok && p.Terminating })
		checkRefused(t, ag.call(t, pr), attest.ReasonPodNotRunning)
	})

	t.Run("pid reused by a process of another pod", func(t *testing.T) {
		testPIDReuse(t, c, ag, web, db)
	})

	t.Run("metrics", func(t *testing.T) {
		mfs, err := ag.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				fmt.Fprintf(&text, "%s %v %v\n", mf.GetName(), m.GetLabel(), m.GetCounter().GetValue())
			}
		}
		for _, want := range []string{"not_in_pod", "unknown_pod", "pod_not_running", "pid_reused"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("no failure counted for %s:\n%s", want, text.String())
			}
		}
	})
}

// call has process pr call the agent, and returns the attestation. A
// refused caller must have seen PermissionDenied with the reason.
func (ag *agent) call(t *testing.T, pr *proc) result {
	t.Helper()
	line := pr.connect(t, ag.sock)
	r := ag.result(t, pr.pid())
	if r.err != nil && line != codes.PermissionDenied.String()+" "+r.err.Error() {
		t.Fatalf("refused by the agent with %v, but the caller saw %q", r.err, line)
	}
	if r.err == nil && line != "OK " {
		t.Fatalf("attested by the agent, but the caller saw %q", line)
	}
	return r
}

// checkRefused checks that the agent refused the caller for reason.
func checkRefused(t *testing.T, r result, reason attest.Reason) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("attested as %+v, want refusal %s", r.w, reason)
	}
	if got, _ := attest.ReasonOf(r.err); got != reason {
		t.Fatalf("refused for %q (%v), want %s", got, r.err, reason)
	}
	if r.w != (attest.Workload{}) {
		t.Fatalf("refusal with a workload: %+v", r.w)
	}
	t.Logf("refused: %v", r.err)
}

// testPIDReuse captures the credentials of a process of pod web as the
// agent does at accept, kills it, and starts a process of pod db at the
// same pid. Attesting the captured credentials then must not yield db.
func testPIDReuse(t *testing.T, c *cluster, ag *agent, web, db pod) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "raw.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	victim := startProc(t, modeConnect)
	web.enter(t, victim.pid())
	if line := victim.connect(t, l.Addr().String()); line != "connected" {
		t.Fatalf("victim: %q", line)
	}
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer, err := attest.ReadPeerCred(conn, attest.DefaultProcRoot)
	if err != nil {
		t.Fatal(err)
	}
	if peer.PID != int32(victim.pid()) {
		t.Fatalf("peer pid %d, want %d", peer.PID, victim.pid())
	}
	if w, err := ag.attestor.Attest(context.Background(), peer); err != nil || w.ServiceAccount != "web" {
		t.Fatalf("before reuse: %+v, %v", w, err)
	}

	victim.stop()
	impostor := startAtPID(t, victim.pid())
	db.enter(t, impostor.Process.Pid)

	// The impostor is attested to db on its own credentials...
	own, err := attest.StartTime(attest.DefaultProcRoot, int32(impostor.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if w, err := ag.attestor.Attest(context.Background(), attest.PeerCred{PID: peer.PID, StartTime: own}); err != nil || w.ServiceAccount != "db" {
		t.Fatalf("impostor on its own credentials: %+v, %v", w, err)
	}
	// ...but never on the victim's connection.
	w, err := ag.attestor.Attest(context.Background(), peer)
	checkRefused(t, result{w, err}, attest.ReasonPIDReused)
}

// startAtPID starts /bin/sleep at pid, which must be free: it sets the
// kernel's last allocated pid to pid-1 just before forking, and retries
// when another fork on the machine took the pid first.
func startAtPID(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	const lastPID = "/proc/sys/kernel/ns_last_pid"
	for attempt := range 200 {
		if err := os.WriteFile(lastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("cannot choose the next pid (needs root in the initial pid namespace): %v", err)
		}
		cmd := exec.Command("/bin/sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Logf("pid %d reused after %d attempts", pid, attempt+1)
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			return cmd
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Fatalf("could not start a process at pid %d: other forks on the machine took it first every time", pid)
	return nil
}
