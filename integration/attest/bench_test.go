package attest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/integration/harness"
)

// staticPods is a PodLookup of fixed pods, so that the benchmark measures
// attestation, not the API server.
type staticPods map[string]attest.Pod

func (s staticPods) PodByUID(uid string) (attest.Pod, bool) { p, ok := s[uid]; return p, ok }

// BenchmarkAttestRealCgroup is the cost of attesting one connection from
// a real process in real pod cgroups (every layout this machine has),
// with the kernel's /proc: the handshake's peer credentials, then Attest.
//
//	cd integration && go test -run '^$' -bench AttestRealCgroup ./attest/
func BenchmarkAttestRealCgroup(b *testing.B) {
	layouts := harness.CgroupLayouts(b)
	const uid = "0f0e0d0c-0b0a-4998-8776-655443322110"
	container := harness.NewContainerID(b)

	l, err := net.Listen("unix", filepath.Join(b.TempDir(), "s"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	pr := startProc(b, modeConnect)
	harness.JoinPodCgroup(b, pr.pid(), uid, container, layouts...)
	if line := pr.connect(b, l.Addr().String()); line != "connected" {
		b.Fatalf("helper: %q", line)
	}
	conn, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	a, err := attest.New(attest.Config{
		Pods:     staticPods{uid: {UID: uid, Namespace: ns, Name: "web-0", ServiceAccount: "web", NodeName: nodeA, Phase: attest.PodRunning}},
		NodeName: nodeA,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p, err := attest.ReadPeerCred(conn, attest.DefaultProcRoot)
		if err != nil {
			b.Fatal(err)
		}
		if w, err := a.Attest(ctx, p); err != nil || w.ContainerID != container {
			b.Fatalf("Attest = %+v, %v", w, err)
		}
	}
}
