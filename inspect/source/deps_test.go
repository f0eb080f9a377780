package source_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksNoServer checks the layering: `castellan cert inspect` reads
// certificates from files, Secrets, TLS endpoints and the agent's sockets
// as a client, and links none of the servers it reads from (the SDS and
// Workload API servers, the agent's store, the CA).
func TestLinksNoServer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const module = "github.com/castellan-mesh/castellan/"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", module+"inspect/...").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	allowed := []string{module + "inspect", module + "internal/", module + "sds/sdsclient"}
	for _, dep := range strings.Fields(string(out)) {
		if !strings.HasPrefix(dep, module) {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(dep, a)
		}
		if !ok {
			t.Errorf("inspect links %s; it may link only inspect, internal packages and sds/sdsclient", dep)
		}
	}
}
