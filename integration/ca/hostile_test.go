package ca_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// clusterKeyID returns the key id the API server signs service-account
// tokens with, read from its published key set.
func clusterKeyID(t *testing.T, api *harness.APIServer) string {
	t.Helper()
	raw, err := api.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("API server key set: %v (%s)", err, raw)
	}
	return set.Keys[0].KeyID
}

// apiRequests returns the API server's own count of requests
// (apiserver_request_total), summed by resource, and in all.
func apiRequests(t *testing.T, api *harness.APIServer) (byResource map[string]float64, total float64) {
	t.Helper()
	raw, err := api.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("reading the API server's metrics: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	byResource = map[string]float64{}
	for _, m := range fams["apiserver_request_total"].GetMetric() {
		res := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == "resource" {
				res = l.GetValue()
			}
		}
		v := m.GetCounter().GetValue()
		byResource[res] += v
		total += v
	}
	return byResource, total
}

// fastClient is an admin client without client-go's default rate limit,
// for setting up many objects.
func fastClient(t *testing.T, api *harness.APIServer) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(api.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestJunkTokenFlood: one peer floods the CA with distinct junk tokens
// (well formed, plausible claims, the cluster's key id, random signature)
// at 10,000/s while workloads with fresh tokens ask for SVIDs. Every
// workload gets its SVID, the API server sees exactly one TokenReview per
// workload token and none for junk, the CA's memory and log volume stay
// bounded. Every token is reviewed here (--offline-bound-tokens=false), so
// that a junk token reaching the API server would show. It runs with the
// per-peer failure limit, and without it (the offline checks alone, as
// against junk from many peers).
func TestJunkTokenFlood(t *testing.T) {
	api := harness.StartAPIServer(t)
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{name: "peer-limited"},
		{name: "offline-checks-alone", flags: []string{"--peer-auth-failure-rate=1e9", "--peer-auth-failure-burst=1000000000"}},
	} {
		t.Run(mode.name, func(t *testing.T) { junkTokenFlood(t, api, "flood-"+mode.name, mode.flags) })
	}
}

func junkTokenFlood(t *testing.T, api *harness.APIServer, ns string, flags []string) {
	ca := harness.StartCAProcess(t, append([]string{"--kubeconfig", api.Kubeconfig, "--offline-bound-tokens=false"}, flags...)...)
	const workloads = 20
	var tokens []string
	for i := range workloads {
		sa := fmt.Sprintf("app-%d", i)
		api.CreateServiceAccount(t, ns, sa)
		tokens = append(tokens, api.Token(t, ns, sa, []string{"istio-ca"}, time.Hour))
	}
	roots := ca.Roots(t)
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: roots, ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	csrs, err := loadgen.MakeCSRs(1)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := apiRequests(t, api)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	floodDone := make(chan *loadgen.FloodResult, 1)
	floodStart := time.Now()
	go func() {
		res, err := loadgen.Flood(ctx, loadgen.FloodConfig{
			Addr: ca.GRPCAddr, ServerName: ca.ServerName, Roots: roots, SourceIP: "127.0.0.2",
			Rate: 10000, Issuer: api.Issuer, Audience: "istio-ca", KeyID: clusterKeyID(t, api),
		})
		if err != nil {
			t.Errorf("flood: %v", err)
		}
		floodDone <- res
	}()
	time.Sleep(2 * time.Second)
	var lat []time.Duration
	for i, tok := range tokens {
		start := time.Now()
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := client.CreateCertificate(rctx, tok, csrs[0], 0)
		cancel()
		if err != nil {
			t.Errorf("workload %d during the flood: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		time.Sleep(250 * time.Millisecond)
	}
	stop()
	flood := <-floodDone
	elapsed := time.Since(floodStart)
	after, _ := apiRequests(t, api)
	m := ca.Metrics(t)
	_, peak := ca.Memory(t)
	lines, authLines := ca.LogLines("authentication failed")

	reviews := after["tokenreviews"] - before["tokenreviews"]
	t.Logf("flood: %s over %s (%.0f/s)", flood, elapsed.Round(time.Millisecond), float64(flood.Sent)/elapsed.Seconds())
	t.Logf("workloads: %d SVIDs, latency p50 %s p99 %s max %s", len(lat), percentile(lat, .5), percentile(lat, .99), slices.Max(lat))
	t.Logf("TokenReviews: API server counted %.0f, CA sent %.0f; refused offline %.0f; peer-limited %.0f",
		reviews, m.Value("castellan_tokenreviews_total"), m.Value("castellan_authn_token_checks_total", "outcome", "refused_offline"), m.Value("castellan_ca_peer_limited_total"))
	t.Logf("CA peak RSS %.1f MiB; %d log lines (%d \"authentication failed\"), %.0f suppressed", float64(peak)/(1<<20), lines, authLines, m.Value("castellan_ca_auth_failure_logs_suppressed_total"))

	if flood.Sent < 10000 {
		t.Errorf("the flood sent only %d junk tokens", flood.Sent)
	}
	if reviews != workloads {
		t.Errorf("the API server counted %.0f TokenReviews, want %d (one per workload token, none for junk)", reviews, workloads)
	}
	if peak > 256<<20 {
		t.Errorf("CA peak RSS %d MiB, over 256 MiB", peak>>20)
	}
	// 20 lines per 10s interval and one summary line each, plus start-up.
	if maxLines := 21*int(elapsed/(10*time.Second)+2) + 20; lines > maxLines {
		t.Errorf("CA logged %d lines during a flood of %s, want at most %d", lines, elapsed.Round(time.Second), maxLines)
	}
}

// TestHeaderFloodMemory: 64 connections each send a call with 8 MiB of
// metadata, ignoring the CA's advertised header-list limit. The CA stays
// under 128 MiB and keeps serving.
func TestHeaderFloodMemory(t *testing.T) {
	dir := t.TempDir()
	minter, err := authn.NewMinter("https://issuer.castellan.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(dir, "jwks.json")
	if err := minter.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	ca := harness.StartCAProcess(t, "--token-review=false", "--jwt-issuer", minter.Issuer(), "--jwks-file", jwks)
	roots := ca.Roots(t)
	_, idle := ca.Memory(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accepted, err := loadgen.HeaderFlood(ctx, loadgen.HeaderFloodConfig{Addr: ca.GRPCAddr, ServerName: ca.ServerName, Roots: roots, Connections: 64, Bytes: 8 << 20})
	if err != nil {
		t.Fatalf("header flood: %v", err)
	}
	_, peak := ca.Memory(t)
	t.Logf("64 x 8 MiB of metadata: the CA read %.1f MiB of header blocks; peak RSS %.1f MiB (%.1f MiB before)", float64(accepted)/(1<<20), float64(peak)/(1<<20), float64(idle)/(1<<20))
	if peak > 128<<20 {
		t.Errorf("CA peak RSS %d MiB, over 128 MiB", peak>>20)
	}
	tok, err := minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: roots, ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	csrs, _ := loadgen.MakeCSRs(1)
	if _, err := client.CreateCertificate(ctx, tok, csrs[0], 0); err != nil {
		t.Errorf("after the flood: %v", err)
	}
	m := ca.Metrics(t)
	t.Logf("connections refused: %v", m.Value("castellan_ca_connections_refused_total"))
}

// TestFreshTokens: many workloads, each with its own service account and
// a token the CA has never seen, ask for SVIDs at once, as in a rollout.
// Every one is issued; the figures (time, TokenReviews, API requests) are
// printed. CASTELLAN_FRESH_TOKENS sets the number (default 10000).
func TestFreshTokens(t *testing.T) {
	n := 10000
	if v := os.Getenv("CASTELLAN_FRESH_TOKENS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	api := harness.StartAPIServer(t)
	fast := fastClient(t, api)
	ctx := context.Background()
	if _, err := fast.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fresh"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setup := time.Now()
	uids := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	work := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range work {
				sa, err := fast.CoreV1().ServiceAccounts("fresh").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sa-%d", i)}}, metav1.CreateOptions{})
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					uids[i] = string(sa.UID)
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	now := time.Now()
	tokens := make([]string, n)
	for i := range n {
		tokens[i] = api.SignTokenForUID(t, "fresh", fmt.Sprintf("sa-%d", i), uids[i], []string{"istio-ca"}, now.Add(-time.Minute), now.Add(time.Hour), nil)
	}
	t.Logf("setup: %d service accounts and tokens in %s", n, time.Since(setup).Round(time.Millisecond))
	all, err := fast.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	for _, mode := range []struct {
		name  string
		flags []string
		n     int
	}{
		{name: "offline", n: n},
		// Every token reviewed: the API server's share, for comparison.
		{name: "reviewed", flags: []string{"--offline-bound-tokens=false"}, n: min(n, 2000)},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ca := harness.StartCAProcess(t, append([]string{"--kubeconfig", api.Kubeconfig, "--log-level", "warn"}, mode.flags...)...)
			// The CA's watch caches must hold every service account before
			// the run, as in a cluster where they exist before their pods.
			harness.WaitFor(t, 2*time.Minute, fmt.Sprintf("the CA's service account index to reach %d", len(all.Items)), func() bool {
				return ca.Metrics(t).Value("castellan_ca_serviceaccount_index_size") >= float64(len(all.Items))
			})
			_, apiBefore := apiRequests(t, api)
			byResBefore, _ := apiRequests(t, api)
			cfg := loadgen.Config{
				Addr: ca.GRPCAddr, ServerName: ca.ServerName, Roots: ca.Roots(t), MetricsURL: "http://" + ca.HTTPAddr + "/metrics",
				Tokens: tokens[:mode.n], Concurrency: 64, Connections: 4, Once: true,
			}
			res, err := loadgen.Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			byResAfter, apiAfter := apiRequests(t, api)
			var sb strings.Builder
			res.Print(&sb, cfg)
			t.Logf("%d fresh tokens (%s):\n%s", mode.n, mode.name, sb.String())
			// The two scrapes of apiRequests themselves are requests.
			t.Logf("API server requests during the run: %.0f in all, %.0f TokenReviews", apiAfter-apiBefore-1, byResAfter["tokenreviews"]-byResBefore["tokenreviews"])
			if res.Requests != mode.n || res.Errors != 0 {
				t.Errorf("%d requests, %d errors (%v), want %d issued", res.Requests, res.Errors, res.ErrorsByCode, mode.n)
			}
			if mode.name == "offline" && res.TokenReviews != 0 {
				t.Errorf("%v TokenReviews for tokens the watch caches confirm, want 0", res.TokenReviews)
			}
		})
	}
}

// TestRevocation: a token that was accepted (and is cached) is refused
// once its service account, or for a pod-bound token its pod, is deleted:
// as soon as the CA's watch sees the deletion, well within the 5m cache
// lifetime. The test allows 30s on a loaded machine and prints the delay.
func TestRevocation(t *testing.T) {
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{name: "offline"},
		{name: "reviewed", flags: []string{"--offline-bound-tokens=false"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ns := "rev-" + mode.name
			ca := harness.StartCAProcess(t, append([]string{"--kubeconfig", api.Kubeconfig}, mode.flags...)...)
			client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: ca.Roots(t), ServerName: ca.ServerName})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			csrs, _ := loadgen.MakeCSRs(1)
			issue := func(tok string) error {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, err := client.CreateCertificate(rctx, tok, csrs[0], 0)
				return err
			}
			refusedWithin := func(what, tok string, del func()) {
				t.Helper()
				for range 3 {
					if err := issue(tok); err != nil {
						t.Fatalf("%s before deletion: %v", what, err)
					}
				}
				del()
				start := time.Now()
				for {
					err := issue(tok)
					if status.Code(err) == codes.Unauthenticated {
						t.Logf("%s: refused %s after the deletion (%v)", what, time.Since(start).Round(time.Millisecond), err)
						break
					}
					if time.Since(start) > 30*time.Second {
						t.Fatalf("%s: still accepted 30s after the deletion (last: %v)", what, err)
					}
					time.Sleep(20 * time.Millisecond)
				}
				if err := issue(tok); status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s: accepted again after being refused: %v", what, err)
				}
			}

			api.CreateServiceAccount(t, ns, "doomed")
			tok := api.Token(t, ns, "doomed", []string{"istio-ca"}, time.Hour)
			refusedWithin("deleted service account", tok, func() { api.DeleteServiceAccount(t, ns, "doomed") })

			api.CreateServiceAccount(t, ns, "web")
			pod, err := api.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "web-1"},
				Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-a",
					Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			secs := int64(3600)
			tr, err := api.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "web", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				Audiences: []string{"istio-ca"}, ExpirationSeconds: &secs,
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			zero := int64(0)
			refusedWithin("deleted pod", tr.Status.Token, func() {
				if err := api.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
					t.Fatal(err)
				}
			})
			m := ca.Metrics(t)
			t.Logf("TokenReviews %.0f, accepted offline %.0f, cache revocations %.0f",
				m.Value("castellan_tokenreviews_total"), m.Value("castellan_authn_token_checks_total", "outcome", "accepted_offline"), m.Value("castellan_authn_cache_total", "result", "revoked"))
		})
	}
}
