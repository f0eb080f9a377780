package attest

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// Workload is the pod a caller was attested to.
type Workload struct {
	// PID is the caller's pid, as seen from the agent's /proc.
	PID int32
	// PodUID, Namespace, PodName and ServiceAccount name the pod; the
	// caller's identity derives from Namespace and ServiceAccount.
	PodUID         string
	Namespace      string
	PodName        string
	ServiceAccount string
	// ContainerID is the runtime's ID of the caller's container (64
	// hexadecimal digits), or empty if the caller runs in the pod's own
	// cgroup.
	ContainerID string
	// NodeName is the node the pod is bound to: this node.
	NodeName string
}

// Config configures an Attestor.
type Config struct {
	// ProcRoot is where the host's /proc is mounted. Empty means "/proc".
	ProcRoot string
	// Pods finds the pods of this node. Required.
	Pods PodLookup
	// NodeName is this node's name. Required: a pod bound to another node
	// is refused.
	NodeName string
	// Logger receives a line for each refusal. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the attestation metrics. Nil means none are
	// registered.
	Registerer prometheus.Registerer
	// PodWait is how long Attest waits for the pod of a caller to be known
	// and Running, when it is not yet: a container's first process may
	// connect before the kubelet reports its pod Running, or before the
	// pod index has seen the pod. Zero means no wait. A pod that has
	// terminated, is being deleted or is bound to another node is refused
	// at once.
	PodWait time.Duration
}

// podPoll is how often Attest looks again for a pod it waits for.
const podPoll = 50 * time.Millisecond

// Attestor attributes the peers of the agent's socket to pods on this
// node. It is safe for concurrent use.
type Attestor struct {
	procRoot string
	pods     PodLookup
	node     string
	log      *slog.Logger
	metrics  *metrics
	podWait  time.Duration
}

// New returns an Attestor.
func New(cfg Config) (*Attestor, error) {
	switch {
	case cfg.Pods == nil:
		return nil, errors.New("attest: Config.Pods is required")
	case cfg.NodeName == "":
		return nil, errors.New("attest: Config.NodeName is required")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	a := &Attestor{procRoot: cfg.ProcRoot, pods: cfg.Pods, node: cfg.NodeName, log: cfg.Logger, metrics: m, podWait: cfg.PodWait}
	if a.procRoot == "" {
		a.procRoot = DefaultProcRoot
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a, nil
}

// Attest returns the pod whose process p is. p comes from the connection
// (PeerFromContext). Every failure is an *Error; see Reason.
func (a *Attestor) Attest(ctx context.Context, p PeerCred) (Workload, error) {
	w, err := a.attest(ctx, p)
	if err != nil {
		return Workload{}, a.refused(ctx, p, err)
	}
	a.metrics.attestations.WithLabelValues("ok").Inc()
	return w, nil
}

// refused counts and logs the refusal of p for err, and returns err as an
// *Error.
func (a *Attestor) refused(ctx context.Context, p PeerCred, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		e = refuse(ReasonProcUnreadable, p.PID, err, "could not attest process %d", p.PID)
		err = e
	}
	a.metrics.attestations.WithLabelValues("refused").Inc()
	a.metrics.failures.WithLabelValues(string(e.Reason)).Inc()
	a.log.InfoContext(ctx, "caller refused", "pid", e.PID, "reason", string(e.Reason), "error", err.Error())
	return err
}

// attest runs the steps of Attest in order: cgroup, pod, pid reuse.
func (a *Attestor) attest(ctx context.Context, p PeerCred) (Workload, error) {
	if p.PID <= 0 || p.StartTime == 0 {
		return Workload{}, refuse(ReasonNoPeerCredentials, p.PID, nil, "the connection carries no peer process credentials")
	}
	cg, err := a.readCgroup(p.PID)
	if err != nil {
		return Workload{}, err
	}
	pod, err := a.waitPod(ctx, p.PID, cg)
	if err != nil {
		return Workload{}, err
	}
	// The cgroup was read from whichever process had the pid at that
	// moment. If that process still has the start time recorded when the
	// connection was accepted, it is the one that connected.
	if err := a.checkSameProcess(p); err != nil {
		return Workload{}, err
	}
	return Workload{
		PID:            p.PID,
		PodUID:         pod.UID,
		Namespace:      pod.Namespace,
		PodName:        pod.Name,
		ServiceAccount: pod.ServiceAccount,
		ContainerID:    cg.ContainerID,
		NodeName:       pod.NodeName,
	}, nil
}

// readCgroup reads and parses /proc/<pid>/cgroup.
func (a *Attestor) readCgroup(pid int32) (cgroupPod, error) {
	data, err := smallfile.Read(procPath(a.procRoot, pid, "cgroup"), maxCgroupSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return cgroupPod{}, refuse(ReasonPIDReused, pid, nil, "process %d exited after it connected", pid)
	case err != nil:
		return cgroupPod{}, refuse(ReasonProcUnreadable, pid, err, "could not read the cgroups of process %d", pid)
	}
	cg, err := parseCgroup(data)
	switch {
	case err != nil:
		return cgroupPod{}, refuse(ReasonAmbiguousCgroup, pid, err, "the cgroups of process %d do not name one pod", pid)
	case cg.PodUID == "":
		return cgroupPod{}, refuse(ReasonNotInPod, pid, nil, "process %d runs in no pod's cgroup (a host process, or a container the kubelet did not start)", pid)
	}
	return cg, nil
}

// waitPod returns a.pod, after waiting up to a.podWait for a pod that is
// not yet known or still pending to run.
func (a *Attestor) waitPod(ctx context.Context, pid int32, cg cgroupPod) (Pod, error) {
	pod, err := a.pod(pid, cg)
	if err == nil || a.podWait <= 0 || !mayStart(err) {
		return pod, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.podWait)
	defer cancel()
	tick := time.NewTicker(podPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return pod, err
		case <-tick.C:
		}
		pod, err = a.pod(pid, cg)
		if err == nil || !mayStart(err) {
			return pod, err
		}
	}
}

// mayStart reports whether a refusal by a.pod may be lifted soon: the pod
// is not known yet, or is pending.
func mayStart(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Reason == ReasonUnknownPod || e.pending)
}

// pod finds the pod cg names and checks that it runs on this node.
func (a *Attestor) pod(pid int32, cg cgroupPod) (Pod, error) {
	pod, ok := a.pods.PodByUID(cg.PodUID)
	switch {
	case !ok:
		return Pod{}, refuse(ReasonUnknownPod, pid, nil, "process %d is in pod %s, which is not a pod bound to node %s", pid, cg.PodUID, a.node)
	case pod.NodeName != a.node:
		return Pod{}, refuse(ReasonOtherNode, pid, nil, "process %d is in pod %s/%s, which is bound to node %q, not %s", pid, pod.Namespace, pod.Name, pod.NodeName, a.node)
	case pod.Terminating:
		return Pod{}, refuse(ReasonPodNotRunning, pid, nil, "process %d is in pod %s/%s, which is being deleted", pid, pod.Namespace, pod.Name)
	case pod.Phase != PodRunning:
		e := refuse(ReasonPodNotRunning, pid, nil, "process %d is in pod %s/%s, whose phase is %s, not Running", pid, pod.Namespace, pod.Name, pod.Phase)
		e.pending = pod.Phase == PodPending
		return Pod{}, e
	case pod.ServiceAccount == "" || pod.Namespace == "":
		return Pod{}, refuse(ReasonUnknownPod, pid, nil, "pod %s has no namespace or service account", pod.UID)
	}
	return pod, nil
}

// checkSameProcess refuses p if its pid no longer names the process that
// connected.
func (a *Attestor) checkSameProcess(p PeerCred) error {
	st, err := StartTime(a.procRoot, p.PID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return refuse(ReasonPIDReused, p.PID, nil, "process %d exited while it was attested", p.PID)
	case err != nil:
		return refuse(ReasonProcUnreadable, p.PID, err, "could not check the start time of process %d", p.PID)
	case st != p.StartTime:
		return refuse(ReasonPIDReused, p.PID, nil, "pid %d was reused: the process that connected started at tick %d, the one now at that pid at tick %d", p.PID, p.StartTime, st)
	}
	return nil
}
