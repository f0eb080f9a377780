package authz_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/policy"
)

// The synthetic mesh of the benchmarks: 50 namespaces of 20 workloads
// (1,000 workloads) and 10,000 AuthorizationPolicies: 10 mesh-wide, 2 per
// namespace (100) and 9,890 selecting one workload each (about 10 per
// workload), of five shapes that between them use most fields. Plus one
// namespace PeerAuthentication per namespace and a workload one for every
// tenth workload.
const (
	benchNamespaces   = 50
	benchPerNamespace = 20
	benchPolicies     = 10000
	benchMeshWide     = 10
	benchPerNSWide    = 2
)

func benchWorkloads() []policy.Workload {
	var out []policy.Workload
	for n := range benchNamespaces {
		for i := range benchPerNamespace {
			out = append(out, policy.Workload{
				Namespace: fmt.Sprintf("ns-%d", n),
				Name:      fmt.Sprintf("app-%d", i),
				Labels:    map[string]string{"app": fmt.Sprintf("app-%d", i), "version": "v1", "team": fmt.Sprintf("t%d", i%4)},
			})
		}
	}
	return out
}

// benchPolicy returns the YAML of selector policy i, for workload i % 1000.
// variant changes its content without changing what it selects.
func benchPolicy(i, variant int) string {
	w := i % (benchNamespaces * benchPerNamespace)
	ns, app := w/benchPerNamespace, w%benchPerNamespace
	name := fmt.Sprintf("p-%d", i)
	sel := fmt.Sprintf("selector: {matchLabels: {app: app-%d}}\n", app)
	var spec string
	switch i % 5 {
	case 0:
		spec = fmt.Sprintf(`rules:
- from:
  - source: {principals: ["cluster.local/ns/ns-%d/sa/client-%d", "cluster.local/ns/ns-%d/sa/admin"]}
  to:
  - operation: {methods: ["GET", "POST"], paths: ["/api/v%d/*", "/items/{*}/detail"]}`, (ns+1)%benchNamespaces, i, ns, variant)
	case 1:
		spec = fmt.Sprintf(`rules:
- from:
  - source: {namespaces: ["ns-%d", "team-*"], ipBlocks: ["10.%d.0.0/16"], notIpBlocks: ["10.%d.66.0/24"]}
  to:
  - operation: {ports: ["8080", "%d"]}`, (ns+2)%benchNamespaces, ns, ns, 9000+variant)
	case 2:
		spec = fmt.Sprintf(`action: DENY
rules:
- to:
  - operation: {paths: ["/admin/*"], notMethods: ["GET"]}
  when:
  - key: request.headers[x-user]
    notValues: ["root-%d"]`, variant)
	case 3:
		spec = fmt.Sprintf(`rules:
- when:
  - key: request.auth.claims[groups]
    values: ["g-%d", "admins"]
  - key: connection.sni
    values: ["*.ns-%d.svc.cluster.local"]
  to:
  - operation: {hosts: ["app-%d.example.com", "*.internal"]}`, variant, ns, app)
	default:
		spec = fmt.Sprintf(`action: AUDIT
rules:
- to:
  - operation: {methods: ["DELETE"], notPaths: ["/tmp/%d/*"]}`, variant)
	}
	meta := ""
	if i%7 == 0 {
		meta = "  annotations: {istio.io/dry-run: \"true\"}"
	}
	return pol("AuthorizationPolicy", fmt.Sprintf("ns-%d", ns), name, meta, sel+spec)
}

func benchYAML() string {
	var docs []string
	for i := range benchMeshWide {
		docs = append(docs, ap("istio-system", fmt.Sprintf("mesh-%d", i), fmt.Sprintf("action: DENY\nrules:\n- to:\n  - operation: {paths: [\"/debug/%d/*\"]}", i)))
	}
	for n := range benchNamespaces {
		for j := range benchPerNSWide {
			docs = append(docs, ap(fmt.Sprintf("ns-%d", n), fmt.Sprintf("ns-wide-%d", j), fmt.Sprintf("action: AUDIT\nrules:\n- from:\n  - source: {notNamespaces: [\"ns-%d\"]}", n)))
		}
		docs = append(docs, pol("PeerAuthentication", fmt.Sprintf("ns-%d", n), "default", "", "mtls: {mode: STRICT}"))
	}
	for i := range benchPolicies - benchMeshWide - benchNamespaces*benchPerNSWide {
		docs = append(docs, benchPolicy(i, 0))
	}
	for w := 0; w < benchNamespaces*benchPerNamespace; w += 10 {
		ns, app := w/benchPerNamespace, w%benchPerNamespace
		docs = append(docs, pol("PeerAuthentication", fmt.Sprintf("ns-%d", ns), fmt.Sprintf("app-%d", app), "",
			fmt.Sprintf("selector: {matchLabels: {app: app-%d}}\nportLevelMtls:\n  15090: {mode: PERMISSIVE}", app)))
	}
	return strings.Join(docs, "---\n")
}

// decodedBench holds the decoded benchmark mesh, shared by the benchmarks
// of one run (resources are never modified).
var decodedBench = sync.OnceValues(func() ([]*policy.Resource, error) {
	return policy.Decode([]byte(benchYAML()), "bench.yaml")
})

func benchResources(b *testing.B) []*policy.Resource {
	b.Helper()
	rs, err := decodedBench()
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, r := range rs {
		if r.Kind == policy.KindAuthorizationPolicy {
			n++
		}
	}
	if n != benchPolicies {
		b.Fatalf("generated %d AuthorizationPolicies, want %d", n, benchPolicies)
	}
	return rs
}

// loadMesh builds an engine holding the whole mesh: policies first, then
// the workloads, as after an initial sync.
func loadMesh(b *testing.B, rs []*policy.Resource, ws []policy.Workload) *authz.Engine {
	e := newEngine(b, authz.Config{})
	for _, r := range rs {
		if _, err := e.Apply(r); err != nil {
			b.Fatal(err)
		}
	}
	for _, w := range ws {
		e.SetWorkload(w)
	}
	return e
}

// BenchmarkDecode10kPolicies measures parsing and validating the YAML of
// the benchmark mesh (10,000 AuthorizationPolicies, 150 PeerAuthentications).
func BenchmarkDecode10kPolicies(b *testing.B) {
	data := []byte(benchYAML())
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := policy.Decode(data, "bench.yaml"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslateMesh measures translating 10,000 policies and computing
// the configuration of all 1,000 workloads from decoded policies. It also
// reports the heap the resulting engine retains.
func BenchmarkTranslateMesh(b *testing.B) {
	rs, ws := benchResources(b), benchWorkloads()
	var e *authz.Engine
	for b.Loop() {
		e = loadMesh(b, rs, ws)
	}
	b.StopTimer()
	reportRetained(b, func() any { return loadMesh(b, rs, ws) })
	cfg, _, _ := e.Workload("ns-3", "app-7")
	b.ReportMetric(float64(len(cfg.Policies)), "policies/workload")
}

// BenchmarkTranslateMeshIncremental builds the same mesh in the other
// order, workloads first, so every policy arrives as an incremental change.
func BenchmarkTranslateMeshIncremental(b *testing.B) {
	rs, ws := benchResources(b), benchWorkloads()
	for b.Loop() {
		e := newEngine(b, authz.Config{})
		for _, w := range ws {
			e.SetWorkload(w)
		}
		for _, r := range rs {
			if _, err := e.Apply(r); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// benchChange measures one policy update in the loaded mesh: translating
// the policy and recomputing the workloads it applies to. It reports the
// number of workloads recomputed per change.
func benchChange(b *testing.B, versions []*policy.Resource) {
	e := loadMesh(b, benchResources(b), benchWorkloads())
	recomputed := 0
	i := 0
	for b.Loop() {
		n, err := e.Apply(versions[i%len(versions)])
		if err != nil {
			b.Fatal(err)
		}
		recomputed = n
		i++
	}
	b.ReportMetric(float64(recomputed), "workloads/op")
}

// BenchmarkRecomputeOneWorkload changes one workload-selector policy.
func BenchmarkRecomputeOneWorkload(b *testing.B) {
	benchChange(b, []*policy.Resource{decodeOne(b, benchPolicy(1234, 1)), decodeOne(b, benchPolicy(1234, 2))})
}

// BenchmarkRecomputeNamespace changes one namespace-wide policy (20
// workloads).
func BenchmarkRecomputeNamespace(b *testing.B) {
	v := func(x int) *policy.Resource {
		return decodeOne(b, ap("ns-7", "ns-wide-0", fmt.Sprintf("action: AUDIT\nrules:\n- from:\n  - source: {notNamespaces: [\"ns-%d\"]}", x)))
	}
	benchChange(b, []*policy.Resource{v(1), v(2)})
}

// BenchmarkRecomputeMeshWide changes one root-namespace policy, which
// every workload must see (1,000 workloads).
func BenchmarkRecomputeMeshWide(b *testing.B) {
	v := func(x int) *policy.Resource {
		return decodeOne(b, ap("istio-system", "mesh-3", fmt.Sprintf("action: DENY\nrules:\n- to:\n  - operation: {paths: [\"/debug/%d/*\"]}", x)))
	}
	benchChange(b, []*policy.Resource{v(1), v(2)})
}

// BenchmarkRecomputePeerAuthentication changes one workload's
// PeerAuthentication.
func BenchmarkRecomputePeerAuthentication(b *testing.B) {
	v := func(mode string) *policy.Resource {
		return decodeOne(b, pol("PeerAuthentication", "ns-4", "app-10", "", "selector: {matchLabels: {app: app-10}}\nmtls: {mode: "+mode+"}"))
	}
	benchChange(b, []*policy.Resource{v("STRICT"), v("PERMISSIVE")})
}

// reportRetained reports the live heap held by what build returns.
func reportRetained(b *testing.B, build func() any) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	keep := build()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB-retained")
}
