// Package attest attributes each connection to the node agent's Unix socket
// to the pod whose process opened it.
//
// Attestation runs in three steps, each a separate function:
//
//  1. When a connection is accepted, Credentials reads the peer's pid, uid
//     and gid from the kernel (SO_PEERCRED) and the start time of that pid
//     (field 22 of /proc/<pid>/stat). The peer cannot forge either.
//  2. Attestor.Attest maps the pid to a pod UID and container ID through
//     /proc/<pid>/cgroup, then the pod UID to its namespace, service account
//     and name through a PodLookup (the pods of this node, see package
//     podindex).
//  3. It then reads the start time again. If it differs from the one taken
//     at accept time, or the process is gone, the pid may have been reused
//     by another process between the two reads, and the caller is refused.
//
// Every refusal is an *Error with a Reason from a small fixed set, counted
// in castellan_agent_attestation_failures_total{reason}; its message says
// why, for the PermissionDenied status the agent returns. A caller that
// cannot be attested gets nothing: the agent never falls back to its own
// identity.
//
// The agent must see the host's processes (hostPID, or a ProcRoot that is
// the host's /proc). A process inside a container that was given a cgroup
// namespace of its own is still recognised: its cgroup paths are read
// relative to the agent's cgroup namespace and may start with "/..".
//
// Limits, by design: SO_PEERCRED names the process that called connect;
// a socket handed to another process (fork, SCM_RIGHTS) keeps the
// identity of the first. A privileged container can move itself into
// another pod's cgroup, and is trusted as much as the node. Static pods
// are refused: the kubelet names their cgroups with a UID of its own, not
// the UID of their mirror pod in the API.
package attest
