package attest_test

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/castellan-mesh/castellan/agent/attest"
)

// TestPeerExitedBeforeHandshake: a process that connects and exits before
// the agent reads its credentials is refused, never attributed to
// whatever holds its pid next.
func TestPeerExitedBeforeHandshake(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pr := startProc(t, modeConnect)
	if line := pr.connect(t, l.Addr().String()); line != "connected" {
		t.Fatalf("helper: %q", line)
	}
	pr.stop()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p, err := attest.ReadPeerCred(conn, attest.DefaultProcRoot)
	if r, _ := attest.ReasonOf(err); r != attest.ReasonPIDReused {
		t.Fatalf("ReadPeerCred of an exited peer = %+v, %v; want %s", p, err, attest.ReasonPIDReused)
	}
	t.Logf("refused: %v", err)
}
