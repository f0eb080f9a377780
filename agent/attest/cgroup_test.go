package attest

import (
	"errors"
	"strings"
	"testing"
)

const (
	uidA  = "1b6d3c4e-9f1a-4b7e-8c2d-0e5f6a7b8c9d"
	uidB  = "22222222-3333-4444-5555-666666666666"
	ctrA  = "4f1c2d3e4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	ctrB  = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	uidAU = "1b6d3c4e_9f1a_4b7e_8c2d_0e5f6a7b8c9d"
)

// v1 returns cgroup v1 lines naming path in a few controllers, as a node
// with the cgroupfs driver shows them.
func v1(path string) string {
	return "12:pids:" + path + "\n11:memory:" + path + "\n4:cpu,cpuacct:" + path + "\n1:name=systemd:" + path + "\n"
}

func TestParseCgroup(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    cgroupPod
		wantErr bool
	}{
		// cgroupfs driver, cgroup v1.
		{name: "v1 cgroupfs besteffort containerd", data: v1("/kubepods/besteffort/pod" + uidA + "/" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 cgroupfs burstable", data: v1("/kubepods/burstable/pod" + uidA + "/" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 cgroupfs guaranteed", data: v1("/kubepods/pod" + uidA + "/" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 cgroupfs crio", data: v1("/kubepods/besteffort/pod" + uidA + "/crio-" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 cgroupfs docker", data: v1("/kubepods/burstable/pod" + uidA + "/docker-" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 cgroupfs under a custom root", data: v1("/docker/" + ctrB + "/kubepods/besteffort/pod" + uidA + "/" + ctrA), want: cgroupPod{uidA, ctrA}},
		{name: "v1 pod cgroup without container", data: v1("/kubepods/besteffort/pod" + uidA), want: cgroupPod{PodUID: uidA}},
		{name: "v1 nested cgroup in container", data: v1("/kubepods/besteffort/pod" + uidA + "/" + ctrA + "/init.scope"), want: cgroupPod{uidA, ctrA}},
		{name: "v1 with unused controllers at root", data: "13:rdma:/\n12:misc:/\n" + v1("/kubepods/pod"+uidA+"/"+ctrA), want: cgroupPod{uidA, ctrA}},
		// systemd driver.
		{name: "v2 systemd besteffort containerd", data: "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 systemd burstable crio", data: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAU + ".slice/crio-" + ctrA + ".scope\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 systemd guaranteed docker", data: "0::/kubepods.slice/kubepods-pod" + uidAU + ".slice/docker-" + ctrA + ".scope\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 systemd nested under kubelet.slice", data: "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n", want: cgroupPod{uidA, ctrA}},
		{name: "v1 systemd driver", data: v1("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope"), want: cgroupPod{uidA, ctrA}},
		{name: "hybrid v1 and v2 agree", data: v1("/kubepods/besteffort/pod"+uidA+"/"+ctrA) + "0::/kubepods/besteffort/pod" + uidA + "/" + ctrA + "\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 seen from a cgroup namespace, systemd", data: "0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 seen from a cgroup namespace, cgroupfs guaranteed", data: "0::/../../pod" + uidA + "/" + ctrA + "\n", want: cgroupPod{uidA, ctrA}},
		{name: "v2 seen from a cgroup namespace, cgroupfs besteffort", data: "0::/../../besteffort/pod" + uidA + "/" + ctrA + "\n", want: cgroupPod{uidA, ctrA}},
		{name: "no trailing newline", data: "0::/kubepods/pod" + uidA + "/" + ctrA, want: cgroupPod{uidA, ctrA}},
		// Not in a pod.
		{name: "host process v2", data: "0::/\n", want: cgroupPod{}},
		{name: "host service", data: "0::/system.slice/containerd.service\n", want: cgroupPod{}},
		{name: "host v1", data: v1("/"), want: cgroupPod{}},
		{name: "empty", data: "", want: cgroupPod{}},
		{name: "kubepods but no pod", data: "0::/kubepods.slice/kubepods-besteffort.slice\n", want: cgroupPod{}},
		{name: "pod dir outside kubepods", data: "0::/user.slice/pod" + uidA + "/" + ctrA + "\n", want: cgroupPod{}},
		{name: "podman scope", data: "0::/user.slice/user-1000.slice/user@1000.service/podman-1234.scope\n", want: cgroupPod{}},
		{name: "pod slice outside kubepods naming", data: "0::/system.slice/foo-pod" + uidAU + ".slice\n", want: cgroupPod{}},
		// Refused: ambiguous or unrecognised.
		{name: "hierarchies name different pods", data: "12:pids:/kubepods/pod" + uidA + "/" + ctrA + "\n0::/kubepods/pod" + uidB + "/" + ctrA + "\n", wantErr: true},
		{name: "hierarchies name different containers", data: "12:pids:/kubepods/pod" + uidA + "/" + ctrA + "\n0::/kubepods/pod" + uidA + "/" + ctrB + "\n", wantErr: true},
		{name: "one hierarchy without container", data: "12:pids:/kubepods/pod" + uidA + "/" + ctrA + "\n0::/kubepods/pod" + uidA + "\n", wantErr: true},
		{name: "two pods in one path", data: "0::/kubepods/pod" + uidA + "/" + ctrA + "/kubepods/pod" + uidB + "/" + ctrB + "\n", wantErr: true},
		{name: "bad pod uid cgroupfs", data: "0::/kubepods/besteffort/podnotauid/" + ctrA + "\n", wantErr: true},
		{name: "uppercase pod uid", data: "0::/kubepods/pod" + strings.ToUpper(uidA) + "/" + ctrA + "\n", wantErr: true},
		{name: "bad pod uid systemd", data: "0::/kubepods.slice/kubepods-pod1234.slice/cri-containerd-" + ctrA + ".scope\n", wantErr: true},
		{name: "crio conmon", data: "0::/kubepods.slice/kubepods-pod" + uidAU + ".slice/crio-conmon-" + ctrA + ".scope\n", wantErr: true},
		{name: "short container id", data: "0::/kubepods/pod" + uidA + "/abc\n", wantErr: true},
		{name: "malformed line", data: "garbage\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCgroup([]byte(tt.data))
			if tt.wantErr {
				if !errors.Is(err, errAmbiguous) {
					t.Fatalf("parseCgroup = %+v, %v; want an ambiguity error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseCgroup = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// FuzzParseCgroup checks that parseCgroup never panics, and that what it
// returns is well formed and taken from its input.
func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte(v1("/kubepods/besteffort/pod" + uidA + "/" + ctrA)))
	f.Add([]byte("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAU + ".slice/cri-containerd-" + ctrA + ".scope\n"))
	f.Add([]byte("0::/../../pod" + uidA + "/crio-" + ctrA + "\n"))
	f.Add([]byte("0::/\n"))
	f.Add([]byte("12:pids:/kubepods/pod" + uidA + "/" + ctrA + "\n0::/kubepods/pod" + uidB + "/" + ctrA + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseCgroup(data)
		if err != nil {
			if !errors.Is(err, errAmbiguous) {
				t.Fatalf("error %v does not wrap errAmbiguous", err)
			}
			if got != (cgroupPod{}) {
				t.Fatalf("error with a result: %+v", got)
			}
			return
		}
		if got.PodUID == "" {
			if got.ContainerID != "" {
				t.Fatalf("container %q without a pod", got.ContainerID)
			}
			return
		}
		if !isPodUID(got.PodUID) {
			t.Fatalf("pod UID %q is not a UUID", got.PodUID)
		}
		s := string(data)
		if !strings.Contains(s, got.PodUID) && !strings.Contains(s, strings.ReplaceAll(got.PodUID, "-", "_")) {
			t.Fatalf("pod UID %q is not in the input", got.PodUID)
		}
		if got.ContainerID != "" && (len(got.ContainerID) != 64 || !isLowerHex(got.ContainerID) || !strings.Contains(s, got.ContainerID)) {
			t.Fatalf("container ID %q is malformed or not in the input", got.ContainerID)
		}
		again, err := parseCgroup(data)
		if err != nil || again != got {
			t.Fatalf("not deterministic: %+v, %v then %+v", got, err, again)
		}
	})
}
