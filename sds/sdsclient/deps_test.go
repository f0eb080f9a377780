package sdsclient_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksOnlyGoControlPlane checks the layering: the client of the SDS
// service is built on go-control-plane's types, gRPC and protobuf alone,
// and never links the server it talks to or any other Castellan package.
func TestLinksOnlyGoControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/castellan-mesh/castellan/sds/sdsclient" {
			continue
		}
		allowed := false
		for _, prefix := range []string{
			"github.com/envoyproxy/go-control-plane/",
			"github.com/envoyproxy/protoc-gen-validate/",
			"github.com/cncf/xds/go/",
			"google.golang.org/grpc",
			"google.golang.org/protobuf/",
			"google.golang.org/genproto/",
			"golang.org/x/",
			"cel.dev/expr",
			"github.com/planetscale/vtprotobuf/",
		} {
			if strings.HasPrefix(dep, prefix) {
				allowed = true
				break
			}
		}
		if !allowed {
			t.Errorf("sdsclient links %s; it may depend on go-control-plane, gRPC and protobuf only", dep)
		}
	}
}
