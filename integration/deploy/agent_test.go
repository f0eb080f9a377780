package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestAgentFromManifest runs the agent with the command and arguments of
// the DaemonSet in deploy/, the paths in them pointed at files as the kubelet
// would mount them: the projected istio-ca token of the agent's service
// account and the published trust ConfigMap. It gets an SVID for its
// service account from a replica.
func TestAgentFromManifest(t *testing.T) {
	api := startAPIServer(t, rbacFlags...)
	installCA(t, api)
	_, caClient := clientAs(t, api, caNamespace, caSA)
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
	waitFor(t, 10*time.Second, "the trust ConfigMap in "+caNamespace, func() bool {
		bundle = trustConfigMap(api, caNamespace)
		return bundle != ""
	})
	rootFile := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(rootFile, []byte(bundle), 0o644); err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(dir, "out")
	socket := filepath.Join(dir, "socket")

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
		default:
			args = append(args, a)
		}
	}
	args = append(args, "--output-dir="+outDir)
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

	chainFile := filepath.Join(outDir, "cert-chain.pem")
	waitFor(t, 30*time.Second, "the agent's SVID", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s %v exited: %v\n%s", filepath.Base(bin), args, err, stderr.String())
		default:
		}
		_, err := os.Stat(chainFile)
		return err == nil
	})
	pemChain, err := os.ReadFile(chainFile)
	if err != nil {
		t.Fatal(err)
	}
	var chain []string
	for _, block := range strings.SplitAfter(string(pemChain), "-----END CERTIFICATE-----\n") {
		if strings.TrimSpace(block) != "" {
			chain = append(chain, block)
		}
	}
	b, _ := bundleOf(t, caSecret(t, api))
	w := workload{id: spiffeIDFor(caNamespace, spec.ServiceAccountName)}
	if err := verifyChain(chain, w, b); err != nil {
		t.Fatalf("the agent's SVID: %v", err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("SDS socket: %v, mode %v; want a socket closed to others", err, fi.Mode())
	}
}
