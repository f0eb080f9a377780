package harness

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// crdResource is the API of CustomResourceDefinitions.
var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallIstioCRDs creates the CRDs that istio.io/api ships
// (kubernetes/customresourcedefinitions.gen.yaml, from the module cache)
// and waits until all are established, as istiod needs before it serves.
func (a *APIServer) InstallIstioCRDs(t testing.TB) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatalf("harness: locating istio.io/api: %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	client, err := dynamic.NewForConfig(a.Config)
	if err != nil {
		t.Fatalf("harness: dynamic client: %v", err)
	}
	ctx := context.Background()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var names []string
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("harness: decoding %s: %v", path, err)
		}
		if obj == nil {
			continue
		}
		crd := &unstructured.Unstructured{Object: obj}
		if _, err := client.Resource(crdResource).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("harness: creating CRD %s: %v", crd.GetName(), err)
		}
		names = append(names, crd.GetName())
	}
	if len(names) == 0 {
		t.Fatalf("harness: no CRDs in %s", path)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, name := range names {
		for !crdEstablished(ctx, client, name) {
			if time.Now().After(deadline) {
				t.Fatalf("harness: CRD %s not established after 60s", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func crdEstablished(ctx context.Context, client dynamic.Interface, name string) bool {
	u, err := client.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
