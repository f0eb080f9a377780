package attest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/castellan-mesh/castellan/agent/attest"
)

// BenchmarkAttest is the cost of attesting one connection, a process in a
// pod, from a /proc root on disk: two small reads, a parse, a lookup.
func BenchmarkAttest(b *testing.B) {
	proc := newFakeProc(b)
	proc.add(100, 5000, "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+uidAU+".slice/cri-containerd-"+ctrA+".scope\n")
	a := newAttestor(b, proc, &pods{m: map[string]attest.Pod{uidA: running(uidA, "shop", "web-0", "web")}}, nil)
	p := attest.PeerCred{PID: 100, StartTime: 5000}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttestRealProc attests this process against the real /proc:
// the kernel renders its cgroup and stat files. This process is in no
// pod, so the pod index is given the pod its cgroups would name: the
// benchmark process stands in a fake root whose files link to the real
// ones.
func BenchmarkAttestRealProc(b *testing.B) {
	pid := int32(os.Getpid())
	root := b.TempDir()
	dir := filepath.Join(root, strconv.Itoa(int(pid)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for _, f := range []string{"stat", "cgroup"} {
		if err := os.Symlink(filepath.Join("/proc", strconv.Itoa(int(pid)), f), filepath.Join(dir, f)); err != nil {
			b.Fatal(err)
		}
	}
	start, err := attest.StartTime(root, pid)
	if err != nil {
		b.Fatal(err)
	}
	a, err := attest.New(attest.Config{ProcRoot: root, Pods: &pods{m: map[string]attest.Pod{}}, NodeName: node, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	p := attest.PeerCred{PID: pid, StartTime: start}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		// Refused (not in a pod, or an unknown one) after reading and
		// parsing the real cgroup file; the cost of a success adds one
		// stat read, measured by BenchmarkReadPeerCred.
		if _, err := a.Attest(ctx, p); err == nil {
			b.Fatal("this process was attested to a pod")
		}
	}
}

// BenchmarkReadPeerCred is the handshake's cost on a real Unix socket
// connection: SO_PEERCRED, SO_PEERPIDFD, the peer's stat.
func BenchmarkReadPeerCred(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.ReadPeerCred(s, attest.DefaultProcRoot); err != nil {
			b.Fatal(err)
		}
	}
}
