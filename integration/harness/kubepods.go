package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodToken returns a one-hour token of pod's service account for
// DefaultAudience, bound to the pod, as the kubelet projects one.
func (a *APIServer) PodToken(t testing.TB, pod *corev1.Pod) string {
	t.Helper()
	secs := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{DefaultAudience},
		ExpirationSeconds: &secs,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	res, err := a.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("harness: TokenRequest bound to pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return res.Status.Token
}

// CreatePod creates the pod ns/name bound to node (spec.nodeName set, as
// the scheduler would), running as service account sa, which must exist,
// and gives it status phase (the kubelet's part; empty means Running).
// It returns the pod as stored, with the UID the API server assigned.
func (a *APIServer) CreatePod(t testing.TB, ns, name, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	if phase == "" {
		phase = corev1.PodRunning
	}
	ctx := context.Background()
	no := false
	pod, err := a.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "app", Image: "app:latest"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("harness: creating pod %s/%s: %v", ns, name, err)
	}
	pod.Status.Phase = phase
	pod, err = a.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("harness: setting pod %s/%s %s: %v", ns, name, phase, err)
	}
	return pod
}

// DeletePod deletes the pod ns/name. With grace false it is gone at once,
// as once the kubelet confirms its containers stopped; with grace true it
// stays, terminating (a deletion timestamp set), since no kubelet
// confirms.
func (a *APIServer) DeletePod(t testing.TB, ns, name string, grace bool) {
	t.Helper()
	opts := metav1.DeleteOptions{}
	if !grace {
		zero := int64(0)
		opts.GracePeriodSeconds = &zero
	}
	err := a.Client.CoreV1().Pods(ns).Delete(context.Background(), name, opts)
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("harness: deleting pod %s/%s: %v", ns, name, err)
	}
}

// CgroupLayout is one way a node names a container's cgroup.
type CgroupLayout string

// The layouts a node can have, as the kubelet and containerd name a
// besteffort container's cgroup in them.
const (
	// CgroupfsV1 is cgroup v1 with the cgroupfs driver, in the pids
	// hierarchy: /sys/fs/cgroup/pids/kubepods/besteffort/pod<uid>/<id>.
	CgroupfsV1 CgroupLayout = "cgroupfs-v1"
	// SystemdV2 is cgroup v2 with the systemd driver:
	// <v2 root>/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope,
	// where the v2 root is /sys/fs/cgroup/unified on a hybrid host and
	// /sys/fs/cgroup on a pure v2 host.
	SystemdV2 CgroupLayout = "systemd-v2"
)

// CgroupLayouts returns the layouts this machine can hold: those whose
// hierarchy is mounted. The test fails if there are none (cgroups need
// root).
func CgroupLayouts(t testing.TB) []CgroupLayout {
	t.Helper()
	var ls []CgroupLayout
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		ls = append(ls, CgroupfsV1)
	}
	if cgroupV2Root() != "" {
		ls = append(ls, SystemdV2)
	}
	if len(ls) == 0 {
		t.Fatal("harness: no cgroup hierarchy to create pods' cgroups in (neither /sys/fs/cgroup/pids nor a cgroup v2 mount)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("harness: creating cgroups needs root")
	}
	return ls
}

func cgroupV2Root() string {
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
			return root
		}
	}
	return ""
}

// NewContainerID returns a random container ID as runtimes make them: 64
// lowercase hexadecimal digits.
func NewContainerID(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// PodCgroupDir returns the directory of the container's cgroup in layout,
// for the pod with that UID.
func PodCgroupDir(layout CgroupLayout, podUID, containerID string) string {
	switch layout {
	case CgroupfsV1:
		return filepath.Join("/sys/fs/cgroup/pids/kubepods/besteffort", "pod"+podUID, containerID)
	case SystemdV2:
		u := strings.ReplaceAll(podUID, "-", "_")
		return filepath.Join(cgroupV2Root(), "kubepods.slice", "kubepods-besteffort.slice",
			"kubepods-besteffort-pod"+u+".slice", "cri-containerd-"+containerID+".scope")
	}
	panic("harness: unknown cgroup layout " + string(layout))
}

// JoinPodCgroup moves process pid into the cgroup of container
// containerID of the pod with that UID, in each layout, creating the
// cgroups as the kubelet names them. When the test ends, the processes
// still in them are moved back to the hierarchy's root and the cgroups
// made here are removed, deepest first.
func JoinPodCgroup(t testing.TB, pid int, podUID, containerID string, layouts ...CgroupLayout) {
	t.Helper()
	for _, l := range layouts {
		dir := PodCgroupDir(l, podUID, containerID)
		root := "/sys/fs/cgroup/pids"
		if l == SystemdV2 {
			root = cgroupV2Root()
		}
		made, err := mkdirCgroups(root, dir)
		t.Cleanup(func() { removeCgroups(t, root, made) })
		if err != nil {
			t.Fatalf("harness: creating cgroup %s: %v", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			t.Fatalf("harness: moving process %d into %s: %v", pid, dir, err)
		}
	}
}

// mkdirCgroups creates dir and its missing parents below root, and returns
// the ones it created, shallowest first.
func mkdirCgroups(root, dir string) ([]string, error) {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return nil, err
	}
	var made []string
	cur := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		err := os.Mkdir(cur, 0o755)
		switch {
		case err == nil:
			made = append(made, cur)
		case errors.Is(err, fs.ErrExist):
		default:
			return made, err
		}
	}
	return made, nil
}

// removeCgroups removes the cgroups made, deepest first, after moving any
// process left in them to root. A cgroup that holds another's cgroups (a
// shared parent such as kubepods, still used by another test) stays.
func removeCgroups(t testing.TB, root string, made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		dir := made[i]
		if hasSubdirs(dir) {
			continue
		}
		if procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, p := range strings.Fields(string(procs)) {
				_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(p), 0)
			}
		}
		var err error
		for range 50 {
			// A process that just exited may hold its cgroup a moment.
			if err = os.Remove(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Logf("harness: could not remove cgroup %s: %v", dir, err)
		}
	}
}

func hasSubdirs(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.IsDir() {
			return true
		}
	}
	return false
}
