package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestAgentFromManifest runs the agent with the command and arguments of
// the DaemonSet in deploy/ (node mode), the paths in them pointed at files
// as the kubelet would mount them: the projected istio-ca token of the
// agent's service account, the published trust ConfigMap, and its API
// token, with the RBAC of the manifests, for the watch on its node's pods.
// It serves its socket to attested callers only: this test process is in
// no pod, and is refused with PermissionDenied saying so.
func TestAgentFromManifest(t *testing.T) {
	api, caClient := startCluster(t)
	r := startReplica(t, caClient, "ca-0")

	var ds *appsv1.DaemonSet
	for _, o := range render(t, deployFS(t), "/deploy/overlays/standalone") {
		if o.GetKind() == "DaemonSet" {
			ds = &appsv1.DaemonSet{}
			fromUnstructured(t, o, ds)
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in overlays/standalone")
	}
	spec := ds.Spec.Template.Spec
	var container corev1.Container
	for _, c := range spec.Containers {
		if c.Name == "agent" {
			container = c
		}
	}

	// What the kubelet would mount: the projected token (its audience as
	// in the manifest) and the trust ConfigMap (as the leader published it).
	var audience string
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if audience != harness.DefaultAudience {
		t.Fatalf("the agent's projected token has audience %q, want %q", audience, harness.DefaultAudience)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte(api.Token(t, caNamespace, spec.ServiceAccountName, []string{audience}, time.Hour)), 0o600); err != nil {
		t.Fatal(err)
	}
	var bundle string
	harness.WaitFor(t, 10*time.Second, "the trust ConfigMap in "+caNamespace, func() bool {
		bundle = trustConfigMap(api, caNamespace)
		return bundle != ""
	})
	rootFile := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(rootFile, []byte(bundle), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "socket")
	kubeconfig := saKubeconfig(t, api, caNamespace, spec.ServiceAccountName)

	bin, sub, flags := containerCommand(t, container)
	args := []string{}
	if sub != "" {
		args = append(args, sub)
	}
	for _, a := range flags {
		name, _, _ := strings.Cut(a, "=")
		switch name {
		case "--ca-addr":
			// The Service name stays the name checked in the CA's certificate.
			host, _, _ := strings.Cut(strings.TrimPrefix(a, "--ca-addr="), ":")
			args = append(args, "--ca-addr="+r.grpcAddr, "--ca-server-name="+host)
		case "--root-cert":
			args = append(args, "--root-cert="+rootFile)
		case "--token-file":
			args = append(args, "--token-file="+tokenFile)
		case "--sds-socket":
			args = append(args, "--sds-socket="+socket)
		case "--http-addr":
			args = append(args, "--http-addr=127.0.0.1:0")
		case "--node-name":
			// The kubelet expands $(NODE_NAME) from the downward API.
			if a != "--node-name=$(NODE_NAME)" {
				t.Fatalf("the DaemonSet passes %s, want --node-name=$(NODE_NAME)", a)
			}
			args = append(args, "--node-name=node-1")
		default:
			args = append(args, a)
		}
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	cmd := exec.Command(bin, args...)
	// The container's literal environment (GODEBUG) applies too.
	cmd.Env = os.Environ()
	for _, e := range container.Env {
		if e.ValueFrom == nil {
			cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	var err error
	harness.WaitFor(t, 30*time.Second, "the agent's answer", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s %v exited: %v\n%s", filepath.Base(bin), args, err, stderr.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = sdsclient.Fetch(ctx, socket, "default")
		return status.Code(errors.Unwrap(err)) == codes.PermissionDenied
	})
	if !strings.Contains(err.Error(), "runs in no pod") {
		t.Fatalf("a process in no pod was refused with %v, want the reason", err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("SDS socket: %v, mode %v; want a socket that the pods' containers can reach (attestation protects it)", err, fi.Mode())
	}
	if !strings.Contains(stderr.String(), `"attestation":"node"`) {
		t.Fatalf("the agent does not run in node mode:\n%s", stderr.String())
	}
}
