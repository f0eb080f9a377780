package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/integration/harness"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// ctbOverlay is a test overlay: the standalone install plus the
// cluster-trust-bundle component.
const ctbOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/cluster-trust-bundle
`

// policyServerOverlay is a test overlay: the standalone install plus the
// policy server ("castellan authz serve").
const policyServerOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/policy-server
`

// federationOverlay is a test overlay: the standalone install with
// NetworkPolicies and the bundle endpoint (components/federation), whose
// patch opens the bundle endpoint's port in the CA's policy.
const federationOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/networkpolicy
- ../../components/federation
`

// federationOnlyOverlay is a test overlay: the bundle endpoint without
// NetworkPolicies (the component's policy patch then matches nothing).
const federationOnlyOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../standalone
components:
- ../../components/federation
`

// withTestOverlay returns deploy/ in memory with one more overlay,
// overlays/<name>, holding kustomization, and the policy-server and
// federation test overlays.
func withTestOverlay(t testing.TB, name, kustomization string) filesys.FileSystem {
	t.Helper()
	fsys := deployFS(t)
	if err := fsys.WriteFile("/deploy/overlays/"+name+"/kustomization.yaml", []byte(kustomization)); err != nil {
		t.Fatal(err)
	}
	if err := fsys.WriteFile("/deploy/overlays/policy-server/kustomization.yaml", []byte(policyServerOverlay)); err != nil {
		t.Fatal(err)
	}
	for dir, k := range map[string]string{"federation": federationOverlay, "federation-only": federationOnlyOverlay} {
		if err := fsys.WriteFile("/deploy/overlays/"+dir+"/kustomization.yaml", []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	return fsys
}

// overlays are the kustomizations an operator installs, by path in the
// file system withTestOverlay returns.
var overlays = []string{
	"/deploy/overlays/standalone",
	"/deploy/overlays/istio",
	"/deploy/overlays/istio-ca",
	"/deploy/overlays/production",
	"/deploy/overlays/ctb",
	"/deploy/overlays/policy-server",
	"/deploy/overlays/federation",
	"/deploy/overlays/federation-only",
}

// TestManifests renders every overlay and applies each object server-side
// to the in-process API server: the standalone install for real, then an
// upgrade to the production overlay and a rollback, and every other
// overlay as a dry run. Each object must be accepted.
func TestManifests(t *testing.T) {
	api := harness.StartAPIServer(t, rbacFlags...)
	fsys := withTestOverlay(t, "ctb", ctbOverlay)
	ctx := context.Background()
	ap := newApplier(t, api)

	rendered := map[string][]*unstructured.Unstructured{}
	for _, o := range overlays {
		rendered[o] = render(t, fsys, o)
	}

	apply := func(dir string, dryRun bool) {
		t.Helper()
		errs := ap.applyAll(ctx, rendered[dir], dryRun)
		for obj, err := range errs {
			t.Errorf("%s (dry run %v): %s refused: %v", dir, dryRun, obj, err)
		}
		if len(errs) == 0 {
			t.Logf("%s: %d objects accepted (dry run %v)", dir, len(rendered[dir]), dryRun)
		}
	}
	apply("/deploy/overlays/standalone", false)
	apply("/deploy/overlays/standalone", false) // applying again changes nothing
	for _, o := range overlays[1:] {
		apply(o, true)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Upgrade to the production overlay, then roll back.
	replicas := func() int32 {
		d, err := api.Client.AppsV1().Deployments(caNamespace).Get(ctx, "castellan-ca", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return *d.Spec.Replicas
	}
	apply("/deploy/overlays/production", false)
	if got := replicas(); got != 3 {
		t.Errorf("after the production overlay: %d CA replicas, want 3", got)
	}
	apply("/deploy/overlays/standalone", false)
	if got := replicas(); got != 2 {
		t.Errorf("after rolling back to standalone: %d CA replicas, want 2", got)
	}

	t.Run("rbac", func(t *testing.T) { checkRBAC(t, api) })
	t.Run("agent rbac", func(t *testing.T) { checkAgentRBAC(t, api) })
}

// access is one question to the API server: may the account do attrs?
type access struct {
	name  string
	attrs authorizationv1.ResourceAttributes
	want  bool
}

// checkAccess asks the API server (SubjectAccessReview) each question
// about the service account sa of the CA's namespace, in a subtest each.
func checkAccess(t *testing.T, api *harness.APIServer, sa string, questions []access) {
	t.Helper()
	user := "system:serviceaccount:" + caNamespace + ":" + sa
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + caNamespace, "system:authenticated"}
	for _, q := range questions {
		t.Run(q.name, func(t *testing.T) {
			attrs := q.attrs
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: groups, ResourceAttributes: &attrs,
			}}
			res, err := api.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status.Allowed != q.want {
				t.Fatalf("allowed = %v, want %v (%s)", res.Status.Allowed, q.want, res.Status.Reason)
			}
		})
	}
}

// checkRBAC asks the API server (SubjectAccessReview) what the CA's
// service account may do: what it needs, and nothing more.
func checkRBAC(t *testing.T, api *harness.APIServer) {
	checkAccess(t, api, caSA, []access{
		{"create tokenreviews", authorizationv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}, true},
		{"get its Secret", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Name: "castellan-ca", Verb: "get"}, true},
		{"watch its Secret", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Name: "castellan-ca", Verb: "watch"}, true},
		{"update its Secret", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Name: "castellan-ca", Verb: "update"}, true},
		{"create a Secret in its namespace", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Verb: "create"}, true},
		{"get another Secret in its namespace", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Name: "other", Verb: "get"}, false},
		{"list all Secrets in its namespace", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Verb: "list"}, false},
		{"delete its Secret", authorizationv1.ResourceAttributes{Namespace: caNamespace, Resource: "secrets", Name: "castellan-ca", Verb: "delete"}, false},
		{"get a Secret elsewhere", authorizationv1.ResourceAttributes{Namespace: "kube-system", Resource: "secrets", Name: "castellan-ca", Verb: "get"}, false},
		{"create a Secret elsewhere", authorizationv1.ResourceAttributes{Namespace: "default", Resource: "secrets", Verb: "create"}, false},
		{"get its Lease", authorizationv1.ResourceAttributes{Namespace: caNamespace, Group: "coordination.k8s.io", Resource: "leases", Name: "castellan-ca", Verb: "get"}, true},
		{"update its Lease", authorizationv1.ResourceAttributes{Namespace: caNamespace, Group: "coordination.k8s.io", Resource: "leases", Name: "castellan-ca", Verb: "update"}, true},
		{"update another Lease", authorizationv1.ResourceAttributes{Namespace: caNamespace, Group: "coordination.k8s.io", Resource: "leases", Name: "other", Verb: "update"}, false},
		{"update a Lease elsewhere", authorizationv1.ResourceAttributes{Namespace: "kube-system", Group: "coordination.k8s.io", Resource: "leases", Name: "castellan-ca", Verb: "update"}, false},
		{"create ConfigMaps anywhere", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "configmaps", Verb: "create"}, true},
		{"update ConfigMaps anywhere", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "configmaps", Name: "istio-ca-root-cert", Verb: "update"}, true},
		{"delete ConfigMaps", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "configmaps", Name: "istio-ca-root-cert", Verb: "delete"}, false},
		{"watch namespaces", authorizationv1.ResourceAttributes{Resource: "namespaces", Verb: "watch"}, true},
		{"delete namespaces", authorizationv1.ResourceAttributes{Resource: "namespaces", Name: "default", Verb: "delete"}, false},
		{"list pods", authorizationv1.ResourceAttributes{Resource: "pods", Verb: "list"}, true},
		{"watch pods", authorizationv1.ResourceAttributes{Resource: "pods", Verb: "watch"}, true},
		{"watch service accounts", authorizationv1.ResourceAttributes{Resource: "serviceaccounts", Verb: "watch"}, true},
		{"create service account tokens", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "serviceaccounts", Subresource: "token", Name: "web", Verb: "create"}, false},
		{"update service accounts", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "serviceaccounts", Name: "web", Verb: "update"}, false},
		{"get a pod anywhere", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "get"}, true},
		{"update pods", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "update"}, false},
		{"delete pods", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Name: "web-1", Verb: "delete"}, false},
		{"create pods/eviction", authorizationv1.ResourceAttributes{Namespace: "team-a", Resource: "pods", Subresource: "eviction", Name: "web-1", Verb: "create"}, false},
		{"create ClusterTrustBundles without the component", authorizationv1.ResourceAttributes{Group: "certificates.k8s.io", Resource: "clustertrustbundles", Verb: "create"}, false},
	})
}

// TestManifestsHardening checks the rendered workloads: every container
// has probes (long-running ones), requests and limits, a read-only root
// file system, no privilege escalation, all capabilities dropped and the
// RuntimeDefault seccomp profile, and runs as non-root (but for the one
// init container that hands the socket directory to the agent).
func TestManifestsHardening(t *testing.T) {
	fsys := withTestOverlay(t, "ctb", ctbOverlay)
	for _, dir := range overlays {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			objs := render(t, fsys, dir)
			var sawCA, sawAgent, sawPDB bool
			for _, o := range objs {
				switch o.GetKind() {
				case "Deployment":
					var d appsv1.Deployment
					fromUnstructured(t, o, &d)
					sawCA = true
					if *d.Spec.Replicas < 2 {
						t.Errorf("Deployment %s has %d replicas, want at least 2", d.Name, *d.Spec.Replicas)
					}
					checkPod(t, "Deployment "+d.Name, d.Spec.Template.Spec)
				case "DaemonSet":
					var ds appsv1.DaemonSet
					fromUnstructured(t, o, &ds)
					sawAgent = true
					checkPod(t, "DaemonSet "+ds.Name, ds.Spec.Template.Spec)
					checkAgentVolumes(t, ds.Spec.Template.Spec)
				case "PodDisruptionBudget":
					sawPDB = true
				}
			}
			if !sawCA || !sawAgent || !sawPDB {
				t.Errorf("missing objects: Deployment %v, DaemonSet %v, PodDisruptionBudget %v", sawCA, sawAgent, sawPDB)
			}
		})
	}
}

func fromUnstructured(t testing.TB, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := kruntime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s: %v", describe(o), err)
	}
}

func checkPod(t *testing.T, owner string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext must set runAsNonRoot and seccomp RuntimeDefault: %+v", owner, psc)
	}
	// The node agent alone shares the host's pid namespace, to attest its
	// callers (deploy/README.md says why).
	if spec.HostNetwork || spec.HostIPC || (spec.HostPID && owner != "DaemonSet castellan-agent") {
		t.Errorf("%s: shares a host namespace", owner)
	}
	check := func(c corev1.Container, init bool) {
		name := owner + " container " + c.Name
		if c.Image == "" {
			t.Errorf("%s: no image", name)
		}
		if !init && (c.LivenessProbe == nil || c.ReadinessProbe == nil || c.StartupProbe == nil) {
			t.Errorf("%s: needs startup, liveness and readiness probes", name)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[r]; !ok {
				t.Errorf("%s: no %s request", name, r)
			}
			if _, ok := c.Resources.Limits[r]; !ok {
				t.Errorf("%s: no %s limit", name, r)
			}
		}
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", name)
			return
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: root file system is writable", name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allows privilege escalation", name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", name)
		}
		if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s: must drop ALL capabilities", name)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccomp profile is not RuntimeDefault", name)
		}
		rootOK := init && c.Name == "socket-dir"
		if rootOK {
			// The only root step: it may keep CAP_CHOWN and nothing else.
			if len(sc.Capabilities.Add) != 1 || sc.Capabilities.Add[0] != "CHOWN" {
				t.Errorf("%s: adds capabilities %v, want only CHOWN", name, sc.Capabilities.Add)
			}
			return
		}
		if len(sc.Capabilities.Add) != 0 {
			t.Errorf("%s: adds capabilities %v", name, sc.Capabilities.Add)
		}
		if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
			t.Errorf("%s: runs as root", name)
		}
	}
	for _, c := range spec.InitContainers {
		check(c, true)
	}
	for _, c := range spec.Containers {
		check(c, false)
	}
}

// checkAgentVolumes checks the agent's socket directory and token.
func checkAgentVolumes(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	var hostPath, token bool
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPath = true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "istio-ca" {
					token = true
				}
			}
		}
	}
	if !hostPath || !token {
		t.Errorf("agent: hostPath socket dir %v, projected token with audience istio-ca %v", hostPath, token)
	}
	// Node mode: the API token is for the watch on the node's pods, and
	// the host's pid namespace for attestation.
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken || !spec.HostPID {
		t.Error("agent: node mode needs its API token (pod watch) and hostPID (attestation)")
	}
	var args string
	for _, c := range spec.Containers {
		args += strings.Join(c.Args, " ") + " "
	}
	for _, want := range []string{"--attestation=node", "--node-name=$(NODE_NAME)", "--sds-socket=/var/run/secrets/workload-spiffe-uds/socket", "--token-file=/var/run/secrets/tokens/istio-token", "--root-cert=/var/run/secrets/istio/root-cert.pem"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent: args %q lack %q", args, want)
		}
	}
}

// TestCRDsMatchIstio checks that deploy/crds holds exactly Istio's
// AuthorizationPolicy and PeerAuthentication CRDs from the istio.io/api
// module the project builds against.
func TestCRDsMatchIstio(t *testing.T) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m istio.io/api: %v", err)
	}
	upstream, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]any{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(upstream), -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil || obj == nil {
			continue
		}
		u := unstructured.Unstructured{Object: obj}
		if u.GetName() == "authorizationpolicies.security.istio.io" || u.GetName() == "peerauthentications.security.istio.io" {
			want[u.GetName()] = obj
		}
	}
	if len(want) != 2 {
		t.Fatalf("found %d of the 2 CRDs in istio.io/api", len(want))
	}
	got := render(t, deployFS(t), "/deploy/crds")
	if len(got) != 2 {
		t.Fatalf("deploy/crds renders %d objects, want 2", len(got))
	}
	for _, o := range got {
		w, ok := want[o.GetName()]
		if !ok {
			t.Errorf("deploy/crds holds %s, which is not one of Istio's two", o.GetName())
			continue
		}
		if !equality.Semantic.DeepEqual(normalize(t, w), normalize(t, o.Object)) {
			t.Errorf("deploy/crds %s differs from istio.io/api's; regenerate it", o.GetName())
		}
	}
}

// normalize round-trips v through JSON so that numbers compare alike.
func normalize(t testing.TB, v map[string]any) map[string]any {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := yaml.Unmarshal(bytes.TrimSpace(b), &out); err != nil {
		t.Fatal(fmt.Errorf("normalize: %w", err))
	}
	return out
}
