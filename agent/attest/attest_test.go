package attest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/internal/testmetric"
)

const (
	node  = "node-a"
	uidA  = "1b6d3c4e-9f1a-4b7e-8c2d-0e5f6a7b8c9d"
	uidAU = "1b6d3c4e_9f1a_4b7e_8c2d_0e5f6a7b8c9d"
	ctrA  = "4f1c2d3e4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	uidB  = "22222222-3333-4444-5555-666666666666"
)

// fakeProc is a /proc root in a temporary directory.
type fakeProc struct {
	t    testing.TB
	root string
}

func newFakeProc(t testing.TB) *fakeProc {
	return &fakeProc{t: t, root: t.TempDir()}
}

// add makes process pid, started at tick start, with the given
// /proc/<pid>/cgroup contents.
func (p *fakeProc) add(pid int32, start uint64, cgroup string) {
	p.t.Helper()
	dir := filepath.Join(p.root, strconv.Itoa(int(pid)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	p.write(filepath.Join(dir, "cgroup"), cgroup)
	p.setStart(pid, start)
}

func (p *fakeProc) setStart(pid int32, start uint64) {
	p.t.Helper()
	stat := fmt.Sprintf("%d (a (weird) comm) S 1 100 100 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 %d 1234567 300\n", pid, start)
	p.write(filepath.Join(p.root, strconv.Itoa(int(pid)), "stat"), stat)
}

func (p *fakeProc) remove(pid int32) {
	if err := os.RemoveAll(filepath.Join(p.root, strconv.Itoa(int(pid)))); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) write(path, s string) {
	p.t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// pods is a PodLookup over a map; hook, if set, runs on every lookup.
type pods struct {
	m    map[string]attest.Pod
	hook func()
}

func (l *pods) PodByUID(uid string) (attest.Pod, bool) {
	if l.hook != nil {
		l.hook()
	}
	p, ok := l.m[uid]
	return p, ok
}

func running(uid, ns, name, sa string) attest.Pod {
	return attest.Pod{UID: uid, Namespace: ns, Name: name, ServiceAccount: sa, NodeName: node, Phase: attest.PodRunning}
}

func newAttestor(t testing.TB, proc *fakeProc, lookup attest.PodLookup, reg prometheus.Registerer) *attest.Attestor {
	t.Helper()
	a, err := attest.New(attest.Config{
		ProcRoot:   proc.root,
		Pods:       lookup,
		NodeName:   node,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttestCgroupNamings attests a process in pod A under every cgroup
// layout the kubelet and the runtimes produce.
func TestAttestCgroupNamings(t *testing.T) {
	v1 := func(path string) string {
		return "12:pids:" + path + "\n11:memory:" + path + "\n3:cpu,cpuacct:" + path + "\n1:name=systemd:" + path + "\n"
	}
	namings := []struct {
		name   string
		cgroup string
	}{
		{"v1 cgroupfs containerd besteffort", v1("/kubepods/besteffort/pod" + uidA + "/" + ctrA)},
		{"v1 cgroupfs containerd burstable", v1("/kubepods/burstable/pod" + uidA + "/" + ctrA)},
		{"v1 cgroupfs guaranteed", v1("/kubepods/pod" + uidA + "/" + ctrA)},
		{"v1 cgroupfs crio", v1("/kubepods/besteffort/pod" + uidA + "/crio-" + ctrA)},
		{"v1 cgroupfs docker", v1("/kubepods/besteffort/pod" + uidA + "/docker-" + ctrA)},
		{"v1 systemd containerd", v1("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope")},
		{"v2 systemd containerd besteffort", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n"},
		{"v2 systemd crio burstable", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAU + ".slice/crio-" + ctrA + ".scope\n"},
		{"v2 systemd docker guaranteed", "0::/kubepods.slice/kubepods-pod" + uidAU + ".slice/docker-" + ctrA + ".scope\n"},
		{"v2 systemd nested kubelet.slice", "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n"},
		{"v2 cgroupfs containerd", "0::/kubepods/burstable/pod" + uidA + "/" + ctrA + "\n"},
		{"v2 from a cgroup namespace", "0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n"},
		{"hybrid", v1("/kubepods/besteffort/pod"+uidA+"/"+ctrA) + "0::/kubepods/besteffort/pod" + uidA + "/" + ctrA + "\n"},
	}
	for _, n := range namings {
		t.Run(n.name, func(t *testing.T) {
			proc := newFakeProc(t)
			proc.add(100, 5000, n.cgroup)
			a := newAttestor(t, proc, &pods{m: map[string]attest.Pod{uidA: running(uidA, "shop", "web-0", "web")}}, nil)
			w, err := a.Attest(context.Background(), attest.PeerCred{PID: 100, UID: 1000, GID: 1000, StartTime: 5000})
			if err != nil {
				t.Fatal(err)
			}
			want := attest.Workload{PID: 100, PodUID: uidA, Namespace: "shop", PodName: "web-0", ServiceAccount: "web", ContainerID: ctrA, NodeName: node}
			if w != want {
				t.Fatalf("Attest = %+v, want %+v", w, want)
			}
		})
	}
}

// TestAttestRefusals covers every reason a caller is refused.
func TestAttestRefusals(t *testing.T) {
	const pid, start = 200, 7000
	inPod := func(uid string) string { return "0::/kubepods/besteffort/pod" + uid + "/" + ctrA + "\n" }
	// inPodB puts the caller in pod uidB, running on this node but for
	// what edit changes.
	inPodB := func(edit func(p *attest.Pod)) func(*fakeProc, *pods) {
		return func(proc *fakeProc, l *pods) {
			p := running(uidB, "shop", "db-0", "db")
			edit(&p)
			l.m[uidB] = p
			proc.add(pid, start, inPod(uidB))
		}
	}
	tests := []struct {
		name   string
		peer   attest.PeerCred
		setup  func(proc *fakeProc, l *pods)
		reason attest.Reason
		msg    string
	}{
		{
			name:   "no credentials",
			peer:   attest.PeerCred{},
			reason: attest.ReasonNoPeerCredentials,
		},
		{
			name:   "process gone",
			setup:  func(proc *fakeProc, l *pods) {},
			reason: attest.ReasonPIDReused, msg: "exited",
		},
		{
			name: "cgroup unreadable",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start, "")
				cg := filepath.Join(proc.root, strconv.Itoa(pid), "cgroup")
				os.Remove(cg)
				os.Mkdir(cg, 0o755)
			},
			reason: attest.ReasonProcUnreadable,
		},
		{
			name: "cgroup too large",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start, strings.Repeat("0::/"+strings.Repeat("x", 1000)+"\n", 70))
			},
			reason: attest.ReasonProcUnreadable, msg: "size limit",
		},
		{
			name:   "host process",
			setup:  func(proc *fakeProc, l *pods) { proc.add(pid, start, "0::/system.slice/sshd.service\n") },
			reason: attest.ReasonNotInPod, msg: "no pod",
		},
		{
			name: "hierarchies disagree",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start, "12:pids:/kubepods/pod"+uidA+"/"+ctrA+"\n0::/kubepods/pod"+uidB+"/"+ctrA+"\n")
			},
			reason: attest.ReasonAmbiguousCgroup,
		},
		{
			name:   "unknown pod",
			setup:  func(proc *fakeProc, l *pods) { proc.add(pid, start, inPod(uidB)) },
			reason: attest.ReasonUnknownPod, msg: uidB,
		},
		{
			name:   "pod on another node",
			setup:  inPodB(func(p *attest.Pod) { p.NodeName = "node-b" }),
			reason: attest.ReasonOtherNode, msg: "node-b",
		},
		{
			name:   "pending pod",
			setup:  inPodB(func(p *attest.Pod) { p.Phase = attest.PodPending }),
			reason: attest.ReasonPodNotRunning, msg: "Pending",
		},
		{
			name:   "terminated pod",
			setup:  inPodB(func(p *attest.Pod) { p.Phase = attest.PodSucceeded }),
			reason: attest.ReasonPodNotRunning, msg: "Succeeded",
		},
		{
			name:   "terminating pod",
			setup:  inPodB(func(p *attest.Pod) { p.Terminating = true }),
			reason: attest.ReasonPodNotRunning, msg: "being deleted",
		},
		{
			name: "pid reused before the cgroup read",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start+1, inPod(uidA))
			},
			reason: attest.ReasonPIDReused, msg: "reused",
		},
		{
			name: "pid reused between the cgroup read and the check",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start, inPod(uidA))
				l.hook = func() { proc.setStart(pid, start+50) }
			},
			reason: attest.ReasonPIDReused, msg: "reused",
		},
		{
			name: "process exits during attestation",
			setup: func(proc *fakeProc, l *pods) {
				proc.add(pid, start, inPod(uidA))
				l.hook = func() { proc.remove(pid) }
			},
			reason: attest.ReasonPIDReused, msg: "exited",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := newFakeProc(t)
			l := &pods{m: map[string]attest.Pod{uidA: running(uidA, "shop", "web-0", "web")}}
			peer := attest.PeerCred{PID: pid, UID: 1000, GID: 1000, StartTime: start}
			if tt.setup == nil {
				peer = tt.peer
			} else {
				tt.setup(proc, l)
			}
			reg := prometheus.NewRegistry()
			a := newAttestor(t, proc, l, reg)
			w, err := a.Attest(context.Background(), peer)
			if err == nil {
				t.Fatalf("Attest = %+v, want refusal %s", w, tt.reason)
			}
			if w != (attest.Workload{}) {
				t.Fatalf("refusal with a workload: %+v", w)
			}
			var e *attest.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not an *attest.Error", err, err)
			}
			if r, ok := attest.ReasonOf(err); !ok || r != tt.reason {
				t.Fatalf("reason %q (%v), want %q: %v", r, ok, tt.reason, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("message %q lacks %q", err, tt.msg)
			}
			if got := testmetric.Sum(t, reg, "castellan_agent_attestation_failures_total", string(tt.reason)); got != 1 {
				t.Fatalf("failures{reason=%s} = %v, want 1", tt.reason, got)
			}
			if got := testmetric.Sum(t, reg, "castellan_agent_attestations_total", "refused"); got != 1 {
				t.Fatalf("attestations{result=refused} = %v, want 1", got)
			}
		})
	}
}

// TestAttestWaitsForAStartingPod: with PodWait, a caller whose pod is not
// yet known, or still pending, is attested once its pod runs; one whose
// pod has terminated is refused without waiting.
func TestAttestWaitsForAStartingPod(t *testing.T) {
	const pid, start = 300, 9000
	pendingPod := running(uidA, "shop", "web-0", "web")
	pendingPod.Phase = attest.PodPending
	donePod := running(uidA, "shop", "web-0", "web")
	donePod.Phase = attest.PodFailed
	tests := []struct {
		name    string
		initial map[string]attest.Pod
		later   attest.Pod // after 3 lookups
		reason  attest.Reason
		lookups int // at most, when refused
	}{
		{name: "unknown then running", initial: map[string]attest.Pod{}, later: running(uidA, "shop", "web-0", "web")},
		{name: "pending then running", initial: map[string]attest.Pod{uidA: pendingPod}, later: running(uidA, "shop", "web-0", "web")},
		{name: "terminated", initial: map[string]attest.Pod{uidA: donePod}, later: running(uidA, "shop", "web-0", "web"), reason: attest.ReasonPodNotRunning, lookups: 1},
		{name: "pending then failed", initial: map[string]attest.Pod{uidA: pendingPod}, later: donePod, reason: attest.ReasonPodNotRunning, lookups: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := newFakeProc(t)
			proc.add(pid, start, "0::/kubepods/pod"+uidA+"/"+ctrA+"\n")
			l := &pods{m: tt.initial}
			n := 0
			l.hook = func() {
				if n++; n == 4 {
					l.m = map[string]attest.Pod{uidA: tt.later}
				}
			}
			a, err := attest.New(attest.Config{ProcRoot: proc.root, Pods: l, NodeName: node, PodWait: time.Minute,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			w, err := a.Attest(context.Background(), attest.PeerCred{PID: pid, StartTime: start})
			if tt.reason == "" {
				if err != nil || w.ServiceAccount != "web" {
					t.Fatalf("Attest = %+v, %v", w, err)
				}
				return
			}
			if r, _ := attest.ReasonOf(err); r != tt.reason || n > tt.lookups {
				t.Fatalf("Attest = %v after %d lookups; want %s after at most %d", err, n, tt.reason, tt.lookups)
			}
		})
	}

	t.Run("gives up when the context ends", func(t *testing.T) {
		proc := newFakeProc(t)
		proc.add(pid, start, "0::/kubepods/pod"+uidA+"/"+ctrA+"\n")
		a, err := attest.New(attest.Config{ProcRoot: proc.root, Pods: &pods{m: map[string]attest.Pod{}}, NodeName: node,
			PodWait: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = a.Attest(ctx, attest.PeerCred{PID: pid, StartTime: start})
		if r, _ := attest.ReasonOf(err); r != attest.ReasonUnknownPod {
			t.Fatalf("Attest = %v, want %s", err, attest.ReasonUnknownPod)
		}
	})
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []attest.Config{{NodeName: node}, {Pods: &pods{}}} {
		if _, err := attest.New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := attest.New(attest.Config{Pods: &pods{}, NodeName: node, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := attest.New(attest.Config{Pods: &pods{}, NodeName: node, Registerer: reg}); err == nil {
		t.Error("a second Attestor registered the same metrics")
	}
}
