package deploy_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// deployDir returns the repository's deploy/ directory.
func deployDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy")
}

// deployFS copies deploy/ into an in-memory file system at /deploy, so that
// tests can add kustomizations beside the real ones.
func deployFS(t testing.TB) filesys.FileSystem {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	root := deployDir(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.Join("/deploy", rel), data)
	})
	if err != nil {
		t.Fatalf("copying deploy/: %v", err)
	}
	return mem
}

// render builds the kustomization at dir (a path in fsys) as
// "kubectl kustomize" does, and returns its objects.
func render(t testing.TB, fsys filesys.FileSystem, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		obj, err := r.Map()
		if err != nil {
			t.Fatalf("kustomize build %s: %s: %v", dir, r.CurId(), err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: obj})
	}
	if len(objs) == 0 {
		t.Fatalf("kustomize build %s: no objects", dir)
	}
	return objs
}

// applier applies objects server-side, as "kubectl apply --server-side".
type applier struct {
	dyn    dynamic.Interface
	disc   discovery.CachedDiscoveryInterface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	crds   func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error)
}

func newApplier(t testing.TB, api *harness.APIServer) *applier {
	t.Helper()
	dyn, err := dynamic.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc := memory.NewMemCacheClient(api.Client.Discovery())
	crdGVR := apiextensionsv1.SchemeGroupVersion.WithResource("customresourcedefinitions")
	return &applier{
		dyn:    dyn,
		disc:   disc,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(disc),
		crds: func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error) {
			u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			var crd apiextensionsv1.CustomResourceDefinition
			return &crd, kruntime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &crd)
		},
	}
}

// applyAll applies objs in the order kubectl would need: CRDs and
// Namespaces first (waiting for the CRDs to be served), then the rest.
// dryRun asks for server-side dry-run (every admission and validation
// step, nothing stored). It returns the first error per object.
func (a *applier) applyAll(ctx context.Context, objs []*unstructured.Unstructured, dryRun bool) map[string]error {
	errs := map[string]error{}
	var first, rest []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "CustomResourceDefinition", "Namespace":
			first = append(first, o)
		default:
			rest = append(rest, o)
		}
	}
	for _, o := range first {
		if err := a.apply(ctx, o, dryRun); err != nil {
			errs[describe(o)] = err
		}
	}
	if !dryRun {
		for _, o := range first {
			if o.GetKind() == "CustomResourceDefinition" {
				if err := a.waitEstablished(ctx, o.GetName()); err != nil {
					errs[describe(o)] = err
				}
			}
		}
	}
	a.disc.Invalidate()
	a.mapper.Reset()
	for _, o := range rest {
		if err := a.apply(ctx, o, dryRun); err != nil {
			errs[describe(o)] = err
		}
	}
	return errs
}

func describe(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", o.GetKind(), ns, o.GetName())
	}
	return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
}

func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("no resource for %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			return fmt.Errorf("%s is namespaced but names no namespace", describe(o))
		}
		ri = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	opts := metav1.ApplyOptions{FieldManager: "castellan-deploy-test", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Apply(ctx, o.GetName(), o, opts)
	return err
}

func (a *applier) waitEstablished(ctx context.Context, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		crd, err := a.crds(ctx, name)
		if err == nil {
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
		} else if !apierrors.IsNotFound(err) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s not established after 30s", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// resourceFor returns the GVR of kind in group/version, via discovery.
func (a *applier) resourceFor(gvk schema.GroupVersionKind) (schema.GroupVersionResource, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return schema.GroupVersionResource{}, err
	}
	return m.Resource, nil
}

// installCA applies the standalone overlay, which holds the CA's
// ServiceAccount and RBAC, to api.
func installCA(t testing.TB, api *harness.APIServer) {
	t.Helper()
	objs := render(t, deployFS(t), "/deploy/overlays/standalone")
	if errs := newApplier(t, api).applyAll(context.Background(), objs, false); len(errs) > 0 {
		t.Fatalf("applying overlays/standalone: %v", errs)
	}
}
