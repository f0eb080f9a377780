package agent_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// floodMaxRSS is the most the agent may hold at its peak (VmHWM) while
// local clients flood it with delta subscriptions.
const floodMaxRSS = 64 << 20

// TestDeltaSubscriptionFlood runs castellan-agent (the slim binary, as the
// DaemonSet runs it) against a real CA and floods it from 20 connections,
// each sending 2,000 delta requests that subscribe to 64 new names, and
// opening a new stream whenever one is refused. Every stream must be
// refused (ResourceExhausted) past the per-stream cap, a proxy must still
// get its certificate during the flood, and the agent's peak RSS must stay
// under 64 MiB. It logs the peak.
func TestDeltaSubscriptionFlood(t *testing.T) {
	s := startStack(t)
	dir, err := os.MkdirTemp("", "flood")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "socket")
	bin := harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace")
	cmd := exec.Command(bin, "--ca-addr="+s.ca.GRPCAddr, "--ca-server-name="+s.ca.ServerName, "--root-cert="+s.ca.RootFile,
		"--token-file="+s.tokenFile, "--sds-socket="+socket, "--http-addr=-", "--log-level=error")
	logs := &harness.Output{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	fetch := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_, err := sdsclient.Fetch(ctx, socket, sds.DefaultSecretName)
		return err
	}
	harness.WaitFor(t, waitTimeout, "the agent's SVID", func() bool { return fetch() == nil })
	before := vmHWM(t, cmd.Process.Pid)

	const (
		conns    = 20
		requests = 2000
	)
	var refused, other atomic.Int64
	var sent atomic.Int64
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := sdsclient.New(socket)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
			defer cancel()
			for n := 0; n < requests && ctx.Err() == nil; {
				d, err := c.DeltaStream(ctx, nil)
				if err != nil {
					other.Add(1)
					return
				}
				ended := make(chan struct{})
				var endErr error
				go func() {
					defer close(ended)
					for {
						if _, err := d.Recv(); err != nil {
							endErr = err
							return
						}
					}
				}()
			stream:
				for ; n < requests; n++ {
					names := make([]string, sds.MaxResourceNames)
					for j := range names {
						names[j] = fmt.Sprintf("flood-%d-%d-%d", i, n, j)
					}
					if d.Subscribe(names...) != nil {
						break stream
					}
					sent.Add(1)
					select {
					case <-ended:
						break stream
					default:
					}
				}
				d.Close() // ends a stream still open when the requests run out
				<-ended
				err = endErr
				switch status.Code(errors.Unwrap(err)) {
				case codes.ResourceExhausted:
					refused.Add(1)
				case codes.Canceled:
				default:
					other.Add(1)
				}
			}
		}()
	}
	// A proxy still gets its certificate during the flood.
	if err := fetch(); err != nil {
		t.Errorf("a proxy during the flood: %v", err)
	}
	wg.Wait()
	peak := vmHWM(t, cmd.Process.Pid)
	t.Logf("flood: %d connections sent %d requests of %d new names; %d streams refused (ResourceExhausted), %d ended otherwise; agent VmHWM %.1f MiB before, %.1f MiB after",
		conns, sent.Load(), sds.MaxResourceNames, refused.Load(), other.Load(), float64(before)/(1<<20), float64(peak)/(1<<20))
	if refused.Load() == 0 {
		t.Fatal("no stream was refused")
	}
	if peak > floodMaxRSS {
		t.Fatalf("agent peak RSS %.1f MiB, over %d MiB", float64(peak)/(1<<20), floodMaxRSS>>20)
	}
	if err := fetch(); err != nil {
		t.Fatalf("a proxy after the flood: %v", err)
	}
}

// vmHWM returns the peak resident set size of process pid, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}
