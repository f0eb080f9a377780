package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// benchAttestor maps each connection to a pod by the number in its user
// agent ("pod-N ..."), standing for the cgroup lookup (measured on its own
// in package attest): pod N runs as service account sa-(N mod accounts).
type benchAttestor struct {
	*nodeFakes
	accounts int
}

func (b benchAttestor) Attest(ctx context.Context, _ attest.PeerCred) (attest.Workload, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, ua := range md.Get("user-agent") {
		if rest, ok := strings.CutPrefix(ua, "pod-"); ok {
			n, err := strconv.Atoi(strings.Fields(rest)[0])
			if err == nil {
				return attest.Workload{Namespace: "bench", ServiceAccount: fmt.Sprintf("sa-%d", n%b.accounts), PodName: fmt.Sprintf("pod-%d", n)}, nil
			}
		}
	}
	return attest.Workload{}, &attest.Error{Reason: attest.ReasonNotInPod, Msg: "no pod"}
}

// BenchmarkNodeFirstResponse measures a node agent with 100 pods of 30
// service accounts starting at once against the real CA: the time from
// each proxy's stream opening to its first SDS response holding its
// certificate (p50, p99), and the CSRs sent per rotation of all
// identities. Run it with
//
//	go test -run '^$' -bench NodeFirstResponse -benchtime 1x ./agent/
func BenchmarkNodeFirstResponse(b *testing.B) {
	const (
		pods     = 100
		accounts = 30
	)
	for range b.N {
		f := newNodeFakes()
		for i := range accounts {
			f.running[fmt.Sprintf("bench/sa-%d", i)] = true
		}
		ca := startCAWith(b, f)
		a := startAgent(b, ca, func(c *agent.Config) {
			c.Attestation = agent.AttestationNode
			c.Attestor = benchAttestor{f, accounts}
			c.Pods = f
			c.OutputDir = ""
		})

		latencies := make([]time.Duration, pods)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := sdsclient.New(a.cfg.SDSSocket, sdsclient.WithDialOptions(grpc.WithUserAgent(fmt.Sprintf("pod-%d", i))))
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				<-start
				began := time.Now()
				st, err := c.Stream(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				if err := st.Subscribe(sds.DefaultSecretName, sds.RootCASecretName); err != nil {
					b.Error(err)
					return
				}
				for {
					r, err := st.Next()
					if err != nil {
						b.Error(err)
						return
					}
					if r.Secrets[sds.DefaultSecretName] != nil {
						latencies[i] = time.Since(began)
						return
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		slices.Sort(latencies)
		p50, p99 := latencies[pods/2], latencies[pods*99/100]
		csrs := func() int {
			f.mu.Lock()
			defer f.mu.Unlock()
			n := 0
			for _, v := range f.grants {
				n += v
			}
			return n
		}
		first := csrs()
		a.RotateNow()
		deadline := time.Now().Add(waitTimeout)
		for csrs() < 2*first && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		rotation := csrs() - first
		b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(first), "CSRs-first")
		b.ReportMetric(float64(rotation), "CSRs/rotation")
		fmt.Printf("%d pods, %d service accounts: first SDS response p50 %s, p99 %s, max %s; CSRs: %d at start, %d per rotation of all identities\n",
			pods, accounts, p50.Round(time.Millisecond), p99.Round(time.Millisecond), latencies[pods-1].Round(time.Millisecond), first, rotation)
	}
}
