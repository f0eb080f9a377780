package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/integration/harness"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// imageBinaries are the binaries deploy/Dockerfile installs, by path in the
// image. The image's entrypoint is the first.
var imageBinaries = []string{"/usr/local/bin/castellan", "/usr/local/bin/castellan-agent"}

// containerCommand returns what container c runs: a locally built binary
// of the image, the castellan subcommand ("" for castellan-agent) and the
// flags.
func containerCommand(t testing.TB, c corev1.Container) (bin, sub string, flags []string) {
	t.Helper()
	command := imageBinaries[0]
	switch len(c.Command) {
	case 0:
	case 1:
		command = c.Command[0]
	default:
		t.Fatalf("container %s: command %q runs more than one of the image's binaries", c.Name, c.Command)
	}
	switch command {
	case "/usr/local/bin/castellan":
		if len(c.Args) == 0 {
			t.Fatalf("container %s: runs castellan without a subcommand", c.Name)
		}
		if c.Args[0] == "authz" && len(c.Args) > 1 {
			return harness.Binary(t, "castellan"), "authz " + c.Args[1], c.Args[2:]
		}
		return harness.Binary(t, "castellan"), c.Args[0], c.Args[1:]
	case "/usr/local/bin/castellan-agent":
		// castellan-agent is built with the build tags of the image.
		return harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace"), "", c.Args
	default:
		t.Fatalf("container %s: command %q is none of the image's binaries %q", c.Name, command, imageBinaries)
		return "", "", nil
	}
}

// saKubeconfig writes a kubeconfig that authenticates as the service
// account ns/sa with a real token, as a pod's in-cluster config does.
func saKubeconfig(t testing.TB, api *harness.APIServer, ns, sa string) string {
	t.Helper()
	cfg, _ := clientAs(t, api, ns, sa)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile, TLSServerName: cfg.ServerName, InsecureSkipTLSVerify: cfg.Insecure}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "sa"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// process is a running "castellan ca" process.
type process struct {
	name               string
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
	exited             chan error

	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// startCommand runs "castellan ca --material=kubernetes" as pod name and
// waits until it serves.
func startCommand(t testing.TB, kubeconfig, name string, extra ...string) *process {
	t.Helper()
	args := append([]string{"ca",
		"--material=kubernetes",
		"--kubeconfig", kubeconfig,
		"--data-dir", filepath.Join(t.TempDir(), "data"),
		"--grpc-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0",
		"--lease-duration", "3s",
		"--renew-deadline", "2s",
		"--retry-period", "250ms",
	}, extra...)
	cmd := exec.Command(harness.Binary(t, "castellan"), args...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+caNamespace, "POD_NAME="+name)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan [2]string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.mu.Lock()
			p.logs.Write(line)
			p.logs.WriteByte('\n')
			p.mu.Unlock()
			var rec struct{ Msg, GRPC, HTTP string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "CA serving" {
				select {
				case serving <- [2]string{rec.GRPC, rec.HTTP}:
				default:
				}
			}
		}
	}()
	go func() {
		<-scanned
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { p.stop(t) })
	select {
	case addrs := <-serving:
		p.grpcAddr, p.httpAddr = addrs[0], addrs[1]
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("castellan ca (%s) exited before serving: %v\n%s", name, err, p.output())
	case <-time.After(60 * time.Second):
		t.Fatalf("castellan ca (%s) not serving after 60s\n%s", name, p.output())
	}
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t testing.TB) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("castellan ca (%s) exited with %v\n%s", p.name, err, p.output())
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("castellan ca (%s) did not stop on SIGTERM\n%s", p.name, p.output())
	}
}

// TestCommand runs two "castellan ca --material=kubernetes" processes as
// the CA's service account, on the RBAC rules of deploy/: they share one
// root, both issue, the leader publishes the trust bundle, and when the
// leader exits on SIGTERM the other takes over with the same root.
func TestCommand(t *testing.T) {
	api, _ := startCluster(t)
	kubeconfig := saKubeconfig(t, api, caNamespace, caSA)
	w := newWorkload(t, api, "team-a", "web")
	ctx := context.Background()

	procs := []*process{startCommand(t, kubeconfig, "cmd-0"), startCommand(t, kubeconfig, "cmd-1")}
	sec := caSecret(t, api)
	bundle, roots := bundleOf(t, sec)
	for _, p := range procs {
		r := &replica{name: p.name, grpcAddr: p.grpcAddr}
		if err := issue(ctx, r.client(t, poolOf(roots)), w, bundle); err != nil {
			t.Fatalf("%s: %v\n%s", p.name, err, p.output())
		}
	}
	harness.WaitFor(t, 15*time.Second, "the trust ConfigMap in team-a", func() bool {
		return trustConfigMap(api, "team-a") == string(sec.Data[kubestore.RootCertKey])
	})

	holder := leaseHolder(t, api)
	var leader, other *process
	for _, p := range procs {
		if p.name == holder {
			leader = p
		} else {
			other = p
		}
	}
	if leader == nil {
		t.Fatalf("Lease holder %q is neither process", holder)
	}
	leader.stop(t)
	harness.WaitFor(t, 15*time.Second, other.name+" to take the Lease", func() bool { return leaseHolder(t, api) == other.name })
	if after := caSecret(t, api); !bytes.Equal(after.Data[kubestore.CAKeyKey], sec.Data[kubestore.CAKeyKey]) {
		t.Fatal("the CA key changed when the leader stopped")
	}
	r := &replica{name: other.name, grpcAddr: other.grpcAddr}
	if err := issue(ctx, r.client(t, poolOf(roots)), w, bundle); err != nil {
		t.Fatalf("%s after the leader stopped: %v", other.name, err)
	}
	other.stop(t)
	for _, p := range procs {
		if out := p.output(); strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, w.token) {
			t.Errorf("%s logged a key or a token", p.name)
		}
	}
}

// TestCommandBadFlags checks that "castellan ca" refuses a bad --material
// with a usage error (exit code 2) that names the flag, and starts
// nothing.
func TestCommandBadFlags(t *testing.T) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "x"}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.Binary(t, "castellan"), "ca", "--material=etcd", "--kubeconfig", path,
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", filepath.Join(t.TempDir(), "data"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("castellan ca --material=etcd: err = %v, want exit code 2\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "--material") || strings.Contains(stderr.String(), "CA serving") {
		t.Fatalf("stderr does not name --material, or the CA started:\n%s", stderr.String())
	}
}

// TestManifestFlags checks that every flag the manifests pass, as an
// argument or as a CASTELLAN_ environment variable, is one the command
// defines, and that every binary they run is one the image installs.
func TestManifestFlags(t *testing.T) {
	dockerfile, err := os.ReadFile(filepath.Join(deployDir(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range imageBinaries {
		name := filepath.Base(path)
		if !strings.Contains(string(dockerfile), "-o /out/"+name+" ./cmd/"+name) || !strings.Contains(string(dockerfile), "/out/"+name+" ") {
			t.Errorf("deploy/Dockerfile does not build ./cmd/%s and copy it into the image", name)
		}
	}

	defined := map[string]map[string]bool{}
	flagsOf := func(bin, sub string) map[string]bool {
		key := bin + " " + sub
		if f, ok := defined[key]; ok {
			return f
		}
		args := []string{"-h"}
		if sub != "" {
			args = append(strings.Fields(sub), "-h")
		}
		out, _ := exec.Command(bin, args...).CombinedOutput()
		f := map[string]bool{}
		for _, line := range strings.Split(string(out), "\n") {
			if fields := strings.Fields(line); len(fields) > 0 && strings.HasPrefix(fields[0], "-") {
				f[strings.TrimLeft(fields[0], "-")] = true
			}
		}
		if len(f) == 0 {
			t.Fatalf("%s %s -h lists no flags:\n%s", filepath.Base(bin), sub, out)
		}
		defined[key] = f
		return f
	}
	fsys := withTestOverlay(t, "ctb", ctbOverlay)
	for _, dir := range overlays {
		for _, o := range render(t, fsys, dir) {
			var spec *corev1.PodSpec
			switch o.GetKind() {
			case "Deployment":
				var d appsv1.Deployment
				fromUnstructured(t, o, &d)
				spec = &d.Spec.Template.Spec
			case "DaemonSet":
				var ds appsv1.DaemonSet
				fromUnstructured(t, o, &ds)
				spec = &ds.Spec.Template.Spec
			default:
				continue
			}
			for _, c := range spec.Containers {
				bin, sub, args := containerCommand(t, c)
				command := strings.TrimSpace(filepath.Base(bin) + " " + sub)
				flags := flagsOf(bin, sub)
				for _, a := range args {
					name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
					if !flags[name] {
						t.Errorf("%s: container %s passes --%s, which %s does not define", describe(o), c.Name, name, command)
					}
				}
				for _, e := range c.Env {
					name, ok := strings.CutPrefix(e.Name, "CASTELLAN_")
					if !ok {
						continue
					}
					if flag := strings.ToLower(strings.ReplaceAll(name, "_", "-")); !flags[flag] {
						t.Errorf("%s: container %s sets %s, but %s has no --%s", describe(o), c.Name, e.Name, command, flag)
					}
				}
			}
		}
	}
}
