package attest

// PodPhase is a pod's status.phase, as the API server reports it.
type PodPhase string

// The pod phases.
const (
	PodPending   PodPhase = "Pending"
	PodRunning   PodPhase = "Running"
	PodSucceeded PodPhase = "Succeeded"
	PodFailed    PodPhase = "Failed"
	PodUnknown   PodPhase = "Unknown"
)

// Pod is what attestation needs to know of a pod.
type Pod struct {
	UID            string
	Namespace      string
	Name           string
	ServiceAccount string
	// NodeName is spec.nodeName, the node the pod is bound to.
	NodeName string
	Phase    PodPhase
	// Terminating is true once the pod has a deletion timestamp.
	Terminating bool
}

// Running reports whether the pod runs and is not being deleted: the only
// state in which its processes are attested.
func (p Pod) Running() bool { return p.Phase == PodRunning && !p.Terminating }

// Serving reports whether the pod's processes may still hold its identity:
// the pod runs, being deleted or not. A pod being deleted drains (its proxy
// finishes its connections over the certificate it holds) until its
// containers stop, so its service account's SVID is kept and renewed until
// the pod leaves phase Running or is gone; new callers from it are
// refused all the same (see Running).
func (p Pod) Serving() bool { return p.Phase == PodRunning }

// PodLookup finds a pod of this node by UID. *podindex.Index implements it
// from an informer on the pods bound to the node.
type PodLookup interface {
	// PodByUID returns the pod with that UID, and false if there is none.
	PodByUID(uid string) (Pod, bool)
}
