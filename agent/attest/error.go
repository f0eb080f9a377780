package attest

import (
	"errors"
	"fmt"
)

// Reason says why a caller could not be attested. The set is small and
// fixed: it is the reason label of castellan_agent_attestation_failures_total.
type Reason string

// The reasons a caller is refused.
const (
	// ReasonNoPeerCredentials: the connection carries no peer credentials
	// (it was not accepted through Credentials, or the kernel gave no pid).
	ReasonNoPeerCredentials Reason = "no_peer_credentials"
	// ReasonProcUnreadable: /proc/<pid> could not be read or parsed.
	ReasonProcUnreadable Reason = "proc_unreadable"
	// ReasonNotInPod: the process is in no pod's cgroup (a host process,
	// or a container not run by the kubelet).
	ReasonNotInPod Reason = "not_in_pod"
	// ReasonAmbiguousCgroup: the process's cgroups name a pod in a way that
	// is not recognised, or name different pods or containers in different
	// hierarchies.
	ReasonAmbiguousCgroup Reason = "ambiguous_cgroup"
	// ReasonPIDReused: the process that connected is gone, or its pid now
	// names another process.
	ReasonPIDReused Reason = "pid_reused"
	// ReasonUnknownPod: no pod with that UID is bound to this node.
	ReasonUnknownPod Reason = "unknown_pod"
	// ReasonOtherNode: the pod is bound to another node.
	ReasonOtherNode Reason = "other_node"
	// ReasonPodNotRunning: the pod is pending, terminated or terminating.
	ReasonPodNotRunning Reason = "pod_not_running"
)

// Reasons lists every Reason, in a stable order.
var Reasons = []Reason{
	ReasonNoPeerCredentials, ReasonProcUnreadable, ReasonNotInPod, ReasonAmbiguousCgroup,
	ReasonPIDReused, ReasonUnknownPod, ReasonOtherNode, ReasonPodNotRunning,
}

// Error is why a caller was refused.
type Error struct {
	// Reason classifies the refusal.
	Reason Reason
	// PID is the caller's pid, 0 if unknown.
	PID int32
	// Msg says what was wrong, for the caller and the operator.
	Msg string
	// Err is the underlying error, if any.
	Err error

	pending bool // the pod is pending: it may yet run
}

func (e *Error) Error() string {
	msg := "attest: " + e.Msg
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of an *Error in err's chain, and false if
// there is none.
func ReasonOf(err error) (Reason, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason, true
	}
	return "", false
}

func refuse(reason Reason, pid int32, err error, format string, args ...any) *Error {
	return &Error{Reason: reason, PID: pid, Msg: fmt.Sprintf(format, args...), Err: err}
}
