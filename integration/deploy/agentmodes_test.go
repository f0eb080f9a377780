package deploy_test

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/integration/harness"
)

// perPodOverlay is a test overlay: the standalone install in per-pod
// mode.
const perPodOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/per-pod
`

// checkAgentRBAC asks the API server what the node agent's service
// account may do: read pods, which node attestation needs, and nothing
// else.
func checkAgentRBAC(t *testing.T, api *harness.APIServer) {
	checkAccess(t, api, "castellan-agent", []access{
		{"list pods", authorizationv1.ResourceAttributes{Resource: "pods", Verb: "list"}, true},
		{"watch pods", authorizationv1.ResourceAttributes{Resource: "pods", Verb: "watch"}, true},
		{"get a pod", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "get"}, true},
		{"update pods", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "update"}, false},
		{"delete pods", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "delete"}, false},
		{"exec in pods", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Subresource: "exec", Name: "web-1", Verb: "create"}, false},
		{"read Secrets", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Verb: "get"}, false},
		{"create tokens", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "serviceaccounts", Subresource: "token", Name: "web", Verb: "create"}, false},
		{"proxy to nodes", authorizationv1.ResourceAttributes{Resource: "nodes", Subresource: "proxy", Name: "node-1", Verb: "get"}, false},
		{"create tokenreviews", authorizationv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}, false},
	})
}

// TestAgentModes checks both ways the agent is deployed against the real
// API server: node mode is what deploy/ installs by default, with exactly
// the privileges attestation needs; the per-pod component removes it,
// and the per-pod workload (Envoy and castellan-agent in one pod) applies
// in a namespace of its own with no host access and no API access.
func TestAgentModes(t *testing.T) {
	api := harness.StartAPIServer(t, rbacFlags...)
	ctx := context.Background()
	fsys := withTestOverlay(t, "per-pod", perPodOverlay)
	ap := newApplier(t, api)

	// The default install runs the agent in node mode.
	var agent *appsv1.DaemonSet
	for _, o := range render(t, fsys, "/deploy/overlays/standalone") {
		if o.GetKind() == "DaemonSet" {
			agent = &appsv1.DaemonSet{}
			fromUnstructured(t, o, agent)
		}
	}
	if agent == nil || !strings.Contains(strings.Join(agent.Spec.Template.Spec.Containers[0].Args, " "), "--attestation=node") {
		t.Fatal("overlays/standalone does not run the agent in node mode")
	}

	// Per-pod mode: no DaemonSet, no agent RBAC; the rest applies.
	objs := render(t, fsys, "/deploy/overlays/per-pod")
	for _, o := range objs {
		switch {
		case o.GetKind() == "DaemonSet", strings.HasPrefix(o.GetName(), "castellan-agent"):
			t.Errorf("per-pod overlay keeps %s", describe(o))
		}
	}
	if errs := ap.applyAll(ctx, objs, false); len(errs) > 0 {
		t.Fatalf("applying the per-pod overlay: %v", errs)
	}

	// The per-pod workload, in a namespace of its own.
	const ns = "team-a"
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	workload := render(t, fsys, "/deploy/per-pod")
	var deployment *appsv1.Deployment
	for _, o := range workload {
		o.SetNamespace(ns)
		if o.GetKind() == "Deployment" {
			deployment = &appsv1.Deployment{}
			fromUnstructured(t, o, deployment)
		}
	}
	if deployment == nil {
		t.Fatal("deploy/per-pod holds no Deployment")
	}
	checkPerPod(t, deployment.Spec.Template.Spec)
	if errs := ap.applyAll(ctx, workload, false); len(errs) > 0 {
		t.Fatalf("applying deploy/per-pod: %v", errs)
	}
	got, err := api.Client.AppsV1().Deployments(ns).Get(ctx, deployment.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Spec.Template.Spec.InitContainers) != 1 || got.Spec.Template.Spec.InitContainers[0].RestartPolicy == nil {
		t.Fatal("the API server dropped the agent's native sidecar")
	}
}

// checkPerPod checks the per-pod template: the agent is a native sidecar
// in single-identity mode with the pod's own istio-ca token, its socket in
// an emptyDir, and the pod has no host access and no API token.
func checkPerPod(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	if spec.HostPID || spec.HostNetwork || spec.HostIPC {
		t.Error("per-pod: shares a host namespace")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("per-pod: mounts an API token")
	}
	var socketVolume string
	for _, v := range spec.Volumes {
		switch {
		case v.HostPath != nil:
			t.Errorf("per-pod: hostPath volume %s", v.Name)
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience != harness.DefaultAudience {
					t.Errorf("per-pod: token audience %q", s.ServiceAccountToken.Audience)
				}
			}
		case v.EmptyDir != nil:
			socketVolume = v.Name
		}
	}
	if len(spec.InitContainers) != 1 {
		t.Fatalf("per-pod: %d init containers, want the agent", len(spec.InitContainers))
	}
	a := spec.InitContainers[0]
	if a.RestartPolicy == nil || *a.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("per-pod: the agent is not a native sidecar (restartPolicy: Always)")
	}
	args := strings.Join(a.Args, " ")
	for _, want := range []string{"--attestation=none", "--token-file=/var/run/secrets/tokens/istio-token", "--sds-socket=/var/run/secrets/workload-spiffe-uds/socket"} {
		if !strings.Contains(args, want) {
			t.Errorf("per-pod: agent args %q lack %q", args, want)
		}
	}
	shared := 0
	for _, c := range append([]corev1.Container{a}, spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.Name == socketVolume && m.MountPath == "/var/run/secrets/workload-spiffe-uds" {
				shared++
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Add) > 0 {
			t.Errorf("per-pod: container %s is not locked down", c.Name)
		}
	}
	if shared != 2 {
		t.Errorf("per-pod: %d containers mount the socket emptyDir, want the agent and Envoy", shared)
	}
}
