package podindex

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// pod is the part of a core/v1 Pod the index reads. The API server's
// JSON is decoded straight into it: the fields of a Pod not named here are
// skipped by the decoder, never held, and the agent does not link the
// core/v1 API types.
type pod struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              podSpec   `json:"spec,omitempty"`
	Status            podStatus `json:"status,omitempty"`
}

type podSpec struct {
	NodeName           string `json:"nodeName,omitempty"`
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
}

type podStatus struct {
	Phase string `json:"phase,omitempty"`
}

// podList is a core/v1 PodList of pods.
type podList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []pod `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (p *pod) DeepCopyObject() runtime.Object {
	if p == nil {
		return nil
	}
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// DeepCopyObject implements runtime.Object.
func (l *podList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	c := *l
	l.ListMeta.DeepCopyInto(&c.ListMeta)
	if l.Items != nil {
		c.Items = make([]pod, len(l.Items))
		for i := range l.Items {
			c.Items[i] = *l.Items[i].DeepCopyObject().(*pod)
		}
	}
	return &c
}

var coreV1 = schema.GroupVersion{Version: "v1"}

// codecs decode Pods and PodLists as pod and podList, and the API
// machinery's own objects (Status, WatchEvent) as usual.
func codecs() serializer.CodecFactory {
	scheme := runtime.NewScheme()
	scheme.AddKnownTypeWithName(coreV1.WithKind("Pod"), &pod{})
	scheme.AddKnownTypeWithName(coreV1.WithKind("PodList"), &podList{})
	metav1.AddToGroupVersion(scheme, coreV1)
	return serializer.NewCodecFactory(scheme)
}

// newRESTClient returns a client of the core/v1 API group that decodes
// with codecs.
func newRESTClient(cfg *rest.Config) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &coreV1
	c.APIPath = "/api"
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = codecs().WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "castellan-agent"
	}
	return rest.RESTClientFor(c)
}
