package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/sds/sdsload"
)

// runBenchSDS opens many Envoy-like SDS streams on a running agent, makes
// it rotate (SIGHUP to --agent-pid, or its own schedule), and reports how
// long each rotation took to reach the last stream, with the agent's RSS
// and CPU per rotation read from its /metrics.
func runBenchSDS(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan bench sds", cliflag.Help{
		Summary: "Open many Envoy-like SDS streams on a running agent, make it rotate, and print\nhow long each rotation took to reach the last stream, with the agent's RSS and\nCPU per rotation.",
	}, stdout, stderr)
	out := cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = out.Errors(err) }()
	socket := fs.String("sds-socket", "", "the agent's SDS socket (required)")
	metricsURL := fs.String("metrics-url", "", "the agent's /metrics URL, for the rotation time, RSS and CPU (e.g. http://127.0.0.1:15020/metrics)")
	pid := fs.Int("agent-pid", 0, "the agent's process ID: each rotation is triggered with SIGHUP (default: wait for the agent's own rotations)")
	streams := fs.Int("streams", 1000, "concurrent SDS streams")
	conns := fs.Int("connections", 0, "gRPC connections the streams share (default: one per stream, as separate proxies)")
	delta := fs.Bool("delta", false, "use DeltaSecrets instead of StreamSecrets")
	rotations := fs.Int("rotations", 5, "rotations to time")
	timeout := fs.Duration("timeout", 2*time.Minute, "longest wait for one rotation to reach every stream")
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *socket == "" {
		return usageError{Err: errors.New("--sds-socket is required")}
	}

	cfg := sdsload.Config{
		Socket:      *socket,
		Streams:     *streams,
		Connections: *conns,
		Delta:       *delta,
		Rotations:   *rotations,
		Timeout:     *timeout,
		Trigger:     func(context.Context) error { return nil },
	}
	if *pid > 0 {
		cfg.Trigger = func(context.Context) error { return syscall.Kill(*pid, syscall.SIGHUP) }
	}
	if *metricsURL != "" {
		cfg.Installed = func(ctx context.Context) (time.Time, error) {
			m, err := scrape(ctx, *metricsURL)
			if err != nil {
				return time.Time{}, err
			}
			ts, ok := m["castellan_agent_svid_last_rotation_timestamp_seconds"]
			if !ok {
				return time.Time{}, fmt.Errorf("%s has no castellan_agent_svid_last_rotation_timestamp_seconds", *metricsURL)
			}
			return time.Unix(0, int64(ts*1e9)), nil
		}
		cfg.Usage = func(ctx context.Context) (float64, float64, error) {
			m, err := scrape(ctx, *metricsURL)
			if err != nil {
				return 0, 0, err
			}
			return m["process_resident_memory_bytes"], m["process_cpu_seconds_total"], nil
		}
	}

	if out.Format() == cliflag.OutputText {
		fmt.Fprintf(stdout, "opening %d streams (%s) on %s\n", *streams, map[bool]string{false: "StreamSecrets", true: "DeltaSecrets"}[*delta], *socket)
	}
	res, err := sdsload.Run(ctx, cfg)
	if err != nil {
		return err
	}
	return out.Write(stdout, newBenchSDSResult(res, *delta, cfg.Usage != nil), func(stdout io.Writer) error {
		printBenchSDS(stdout, res, cfg)
		return nil
	})
}

// printBenchSDS writes the text form of a "castellan bench sds" result.
func printBenchSDS(stdout io.Writer, res sdsload.Result, cfg sdsload.Config) {
	fmt.Fprintf(stdout, "streams          %d, all holding the certificate after %s\n", res.Streams, res.Connect.Round(time.Millisecond))
	for i, r := range res.Rotations {
		fmt.Fprintf(stdout, "rotation %d       trigger->installed %7s   installed->first stream %7s   installed->last stream %7s\n", i+1,
			r.Installed.Sub(r.Triggered).Round(time.Millisecond), r.First.Sub(r.Installed).Round(time.Millisecond), r.FanOut().Round(time.Millisecond))
	}
	fo := res.FanOuts()
	fmt.Fprintf(stdout, "fan-out to last  median %s, max %s (rotation installed -> last of %d streams)\n",
		fo[len(fo)/2].Round(time.Millisecond), fo[len(fo)-1].Round(time.Millisecond), res.Streams)
	if cfg.Usage != nil {
		fmt.Fprintf(stdout, "agent rss        %.1f MiB before, %.1f MiB after\n", res.RSSBefore/(1<<20), res.RSSAfter/(1<<20))
		fmt.Fprintf(stdout, "agent cpu        %s per rotation (CA call, key, and pushes to %d streams)\n", res.CPUPerRotation.Round(100*time.Microsecond), res.Streams)
	}
}

// scrape reads the unlabelled samples of a Prometheus text endpoint.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}
