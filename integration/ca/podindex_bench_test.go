package ca_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/integration/harness"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// BenchmarkPodIndexMemory measures what the pod index costs the CA in a
// cluster of 10,000 pods (100 nodes, 10 namespaces, 300 service accounts):
//
//   - the live heap of a nodeauth.PodIndex, in this process, after a GC
//     (bytes a pod);
//   - the RSS and Go heap in use of a real "castellan ca" process, with no
//     pods, after the 10,000 pods arrived through its watch, and of a
//     second CA started when they exist (the initial list).
//
// It runs once whatever b.N is:
//
//	cd integration && go test ./ca/ -run '^$' -bench PodIndexMemory -benchtime 1x
func BenchmarkPodIndexMemory(b *testing.B) {
	const (
		nPods  = 10000
		nNodes = 100
		nNS    = 10
		nSA    = 30
	)
	api := harness.StartAPIServer(b)
	cfg := rest.CopyConfig(api.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for i := range nNS {
		for j := range nSA {
			api.CreateServiceAccount(b, fmt.Sprintf("team-%d", i), fmt.Sprintf("svc-%d", j))
		}
	}

	empty := startCAProcess(b, api)
	waitPods(b, empty, 0)
	before := memoryOf(b, empty)

	createPods(b, client, nPods, nNodes, nNS, nSA)
	waitPods(b, empty, nPods)
	watched := memoryOf(b, empty)

	listed := startCAProcess(b, api)
	waitPods(b, listed, nPods)
	afterList := memoryOf(b, listed)

	// The index alone, in this process.
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	idx, err := nodeauth.NewPodIndex(nodeauth.PodIndexConfig{Client: client})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- idx.Run(ctx) }()
	if err := idx.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if n := idx.Len(); n != nPods {
		b.Fatalf("index holds %d pods, want %d", n, nPods)
	}
	cancel()
	<-done
	perPod := float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / nPods

	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	b.ReportMetric(perPod, "index-B/pod")
	b.ReportMetric(mib(watched.rss-before.rss), "rss-watch-MiB")
	b.ReportMetric(mib(afterList.rss-before.rss), "rss-list-MiB")
	fmt.Printf("pod index, %d pods on %d nodes: %.0f B/pod live heap in-process (%.1f MiB)\n", nPods, nNodes, perPod, perPod*nPods/(1<<20))
	fmt.Printf("castellan ca, no pods:                 RSS %6.1f MiB, heap in use %6.1f MiB\n", mib(before.rss), mib(before.heap))
	fmt.Printf("castellan ca, %d pods by watch:    RSS %6.1f MiB (%+.1f), heap in use %6.1f MiB (%+.1f)\n", nPods,
		mib(watched.rss), mib(watched.rss-before.rss), mib(watched.heap), mib(watched.heap-before.heap))
	fmt.Printf("castellan ca, started with %d pods: RSS %6.1f MiB (%+.1f), heap in use %6.1f MiB (%+.1f)\n", nPods,
		mib(afterList.rss), mib(afterList.rss-before.rss), mib(afterList.heap), mib(afterList.heap-before.heap))
}

// createPods creates n running pods, spread over nodes, namespaces and
// service accounts, each shaped like a meshed workload pod (labels,
// annotations, two containers with env, ports and resources).
func createPods(b *testing.B, client kubernetes.Interface, n, nodes, namespaces, sas int) {
	b.Helper()
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := createPod(client, i, nodes, namespaces, sas); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func createPod(client kubernetes.Interface, i, nodes, namespaces, sas int) error {
	ctx := context.Background()
	ns := fmt.Sprintf("team-%d", i%namespaces)
	sa := fmt.Sprintf("svc-%d", (i/namespaces)%sas)
	no := false
	res := corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"),
	}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: fmt.Sprintf("%s-%d", sa, i),
			Labels:      map[string]string{"app": sa, "version": "v1", "pod-template-hash": "5d8f7c9b4"},
			Annotations: map[string]string{"sidecar.istio.io/status": `{"initContainers":["istio-init"],"containers":["istio-proxy"]}`, "prometheus.io/scrape": "true"},
		},
		Spec: corev1.PodSpec{
			NodeName:                     fmt.Sprintf("node-%d", i%nodes),
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{
				{Name: "app", Image: "registry.example/" + sa + ":1.4.2", Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: "8080"}}, Resources: res},
				{Name: "istio-proxy", Image: "registry.example/proxyv2:1.28.0", Args: []string{"proxy", "sidecar", "--domain", ns + ".svc.cluster.local"},
					Env: []corev1.EnvVar{{Name: "ISTIO_META_WORKLOAD_NAME", Value: sa}, {Name: "CA_ADDR", Value: "castellan.castellan-system.svc:15012"}}, Resources: res},
			},
		},
	}
	created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %d: %w", i, err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting pod %d running: %w", i, err)
	}
	return nil
}

// startCAProcess starts "castellan ca" against api as its own process.
func startCAProcess(b *testing.B, api *harness.APIServer) *harness.CAProcess {
	b.Helper()
	return harness.StartCAProcess(b, "--kubeconfig", api.Kubeconfig)
}

// waitPods waits until the process's pod index holds n pods.
func waitPods(b *testing.B, ca *harness.CAProcess, n int) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for int(ca.Metrics(b).Value("castellan_ca_pod_index_pods")) != n {
		if time.Now().After(deadline) {
			b.Fatalf("the CA's pod index did not reach %d pods:\n%s", n, ca.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type memory struct{ rss, heap int64 }

// memoryOf samples the process for a few seconds, once the watch is
// quiet, and returns its last RSS and least Go heap in use.
func memoryOf(b *testing.B, ca *harness.CAProcess) memory {
	b.Helper()
	var m memory
	for i := range 5 {
		time.Sleep(time.Second)
		heap := int64(ca.Metrics(b).Value("go_memstats_heap_inuse_bytes"))
		if i == 0 || heap < m.heap {
			m.heap = heap
		}
		m.rss, _ = ca.Memory(b)
	}
	return m
}
