package attest

import (
	"errors"
	"fmt"
	"strings"
)

// cgroupPod is what a process's cgroups say about it: the pod and the
// container it runs in. PodUID is empty for a process in no pod;
// ContainerID is empty for a process in the pod's own cgroup.
type cgroupPod struct {
	PodUID      string
	ContainerID string
}

// errAmbiguous marks cgroup contents that name a pod in a way that is not
// recognised, or that name more than one.
var errAmbiguous = errors.New("ambiguous cgroup")

// parseCgroup reads the contents of /proc/<pid>/cgroup: one line per
// hierarchy, "hierarchy-ID:controller-list:cgroup-path". It recognises the
// paths the kubelet and the container runtimes create, for cgroup v1 and
// v2 and both cgroup drivers:
//
//	cgroupfs: .../kubepods[/besteffort|/burstable]/pod<uid>/[crio-|docker-]<id>
//	systemd:  .../[<prefix>-]kubepods[-besteffort|-burstable]-pod<uid_with_underscores>.slice/(cri-containerd|crio|docker)-<id>.scope
//
// where <id> is 64 lowercase hexadecimal digits. The pod segment may be
// preceded by anything, "/.." included (a cgroup namespace), and the
// container segment followed by anything (cgroups nested in the
// container). Lines that name no pod are ignored. It fails closed: a line
// that names a pod in an unrecognised way, a path that names two pods, and
// lines that disagree on the pod or the container are errors wrapping
// errAmbiguous. A zero cgroupPod and no error means the process is in no
// pod.
func parseCgroup(data []byte) (cgroupPod, error) {
	var found cgroupPod
	var foundLine string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			continue
		}
		_, rest, ok1 := strings.Cut(line, ":")
		_, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return cgroupPod{}, fmt.Errorf("%w: malformed line %q", errAmbiguous, line)
		}
		p, err := parseCgroupPath(path)
		if err != nil {
			return cgroupPod{}, err
		}
		if p.PodUID == "" {
			continue
		}
		if found.PodUID != "" && p != found {
			return cgroupPod{}, fmt.Errorf("%w: hierarchies disagree: %q and %q", errAmbiguous, foundLine, line)
		}
		found, foundLine = p, line
	}
	return found, nil
}

// parseCgroupPath returns the pod and container one cgroup path names.
func parseCgroupPath(path string) (cgroupPod, error) {
	segs := strings.Split(path, "/")
	var p cgroupPod
	for i, seg := range segs {
		var uid string
		var ok bool
		var err error
		if strings.HasSuffix(seg, ".slice") {
			uid, ok, err = systemdPodSlice(seg)
		} else if i > 0 {
			uid, ok, err = cgroupfsPodDir(seg, segs[:i])
		}
		if err != nil {
			return cgroupPod{}, fmt.Errorf("%w: %q: %w", errAmbiguous, path, err)
		}
		if !ok {
			continue
		}
		if p.PodUID != "" {
			return cgroupPod{}, fmt.Errorf("%w: %q names two pods", errAmbiguous, path)
		}
		p.PodUID = uid
		if i+1 < len(segs) && segs[i+1] != "" {
			id, err := containerID(segs[i+1])
			if err != nil {
				return cgroupPod{}, fmt.Errorf("%w: %q: %w", errAmbiguous, path, err)
			}
			p.ContainerID = id
		}
	}
	return p, nil
}

// systemdPodSlice recognises a pod slice of the systemd driver:
// "kubepods-pod<uid>.slice" (guaranteed QoS), "kubepods-besteffort-pod<uid>.slice",
// "kubepods-burstable-pod<uid>.slice", each possibly with a parent's prefix
// ("kubelet-kubepods-…"). The UID has '_' where the pod UID has '-'.
func systemdPodSlice(seg string) (uid string, ok bool, err error) {
	name := strings.TrimSuffix(seg, ".slice")
	i := strings.LastIndex(name, "-pod")
	if i < 0 {
		return "", false, nil
	}
	prefix := name[:i]
	qos := false
	for _, q := range []string{"kubepods", "kubepods-besteffort", "kubepods-burstable"} {
		if prefix == q || strings.HasSuffix(prefix, "-"+q) {
			qos = true
			break
		}
	}
	if !qos {
		return "", false, nil
	}
	uid = strings.ReplaceAll(name[i+len("-pod"):], "_", "-")
	if !isPodUID(uid) {
		return "", false, fmt.Errorf("pod slice %q does not hold a pod UID", seg)
	}
	return uid, true, nil
}

// cgroupfsPodDir recognises a pod directory of the cgroupfs driver:
// "pod<uid>" directly under "kubepods", under "kubepods/besteffort" or
// "kubepods/burstable", or under "..", the root of a cgroup namespace
// below those.
func cgroupfsPodDir(seg string, parents []string) (uid string, ok bool, err error) {
	if !strings.HasPrefix(seg, "pod") {
		return "", false, nil
	}
	parent := parents[len(parents)-1]
	switch {
	case parent == "kubepods" || parent == "..":
	case parent == "besteffort" || parent == "burstable":
		if len(parents) < 2 || (parents[len(parents)-2] != "kubepods" && parents[len(parents)-2] != "..") {
			return "", false, nil
		}
	default:
		return "", false, nil
	}
	uid = seg[len("pod"):]
	if !isPodUID(uid) {
		return "", false, fmt.Errorf("pod directory %q does not hold a pod UID", seg)
	}
	return uid, true, nil
}

// containerPrefixes are the runtimes' names for a container's cgroup:
// containerd, CRI-O and Docker (cri-dockerd).
var containerPrefixes = []string{"cri-containerd-", "crio-", "docker-"}

// containerID recognises a container's cgroup in a pod's: "<id>",
// "crio-<id>" or "docker-<id>" (cgroupfs), "(cri-containerd|crio|docker)-<id>.scope"
// (systemd). Anything else, such as CRI-O's "crio-conmon-<id>.scope" for
// its monitor process, is not a container of the pod.
func containerID(seg string) (string, error) {
	id := strings.TrimSuffix(seg, ".scope")
	for _, p := range containerPrefixes {
		if s, ok := strings.CutPrefix(id, p); ok {
			id = s
			break
		}
	}
	if len(id) != 64 || !isLowerHex(id) {
		return "", fmt.Errorf("%q under a pod is not a container cgroup", seg)
	}
	return id, nil
}

// isPodUID reports whether s is a UUID as the API server writes it:
// 8-4-4-4-12 lowercase hexadecimal digits.
func isPodUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isLowerHexByte(s[i]) {
				return false
			}
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isLowerHexByte(s[i]) {
			return false
		}
	}
	return true
}

func isLowerHexByte(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
