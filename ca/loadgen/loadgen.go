// Package loadgen drives a CA's certificate service with pre-made CSRs and
// tokens and reports throughput and latency. It measures; it asserts
// nothing.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
)

// requestTimeout bounds one request of a run.
const requestTimeout = 30 * time.Second

// floorBatchSize is the number of verify+sign pairs in one batch of the
// crypto floor: about 20 ms of CPU.
const floorBatchSize = 200

// Config configures a run.
type Config struct {
	// Addr is the CA's gRPC address; ServerName and Roots verify it.
	Addr       string
	ServerName string
	Roots      *x509.CertPool
	// MetricsURL, if set, is the CA's /metrics URL; TokenReviews sent
	// during the run are read from it.
	MetricsURL string
	// Tokens are used round-robin. Each must authenticate.
	Tokens []string
	// CSRs are used round-robin. Default: 256 CSRs with no SAN (the CA
	// fills in the caller's identity), made before the run starts.
	CSRs [][]byte
	// Concurrency is the number of requests in flight. Default: 64.
	Concurrency int
	// Connections is the number of gRPC connections shared by the
	// workers. Default: 4.
	Connections int
	// Duration of the measured run. Default: 10s. Requests, if set, stops
	// the run after that many requests instead.
	Duration time.Duration
	Requests int
	// Warmup runs before measuring (connections, caches). Default: 1s.
	Warmup time.Duration
	// Once uses each token for exactly one request, with no warm-up: every
	// request brings a token the CA has never seen, as a rollout of new
	// pods does. The run ends after len(Tokens) requests; Duration,
	// Requests and Warmup are ignored.
	Once bool
	// Rate, if positive, paces the run at this many requests per second
	// (open loop, at most Concurrency in flight): request i is due at
	// start + i/Rate, and its latency counts from then, so that a CA
	// falling behind shows as latency rather than as a slower pace.
	Rate int
	// ServerPID, if set, is the CA's process id on this machine: its CPU
	// time is read from /proc/<pid>/stat (user and system apart) rather
	// than from process_cpu_seconds_total.
	ServerPID int
	// FloorBatches, if positive, measures the crypto floor (MeasureFloor)
	// in this many batches just before and again just after the measured
	// run, so that the CA's CPU per SVID can be set against it. With
	// ServerPID set, the floor runs on the CPUs the CA may run on
	// (MeasureFloorOn).
	FloorBatches int
	// Slices, if above 1 for a timed, unpaced run (Rate 0) with
	// FloorBatches and ServerPID set, cuts the measured run into this many equal slices and measures
	// a few floor batches between them, so that each slice's CPU per SVID
	// is set against the floor measured right around it (Result.Paired).
	// On a machine that shares its cores, the speed of the same work
	// varies by tens of percent within a minute; the pairs compare like
	// with like.
	Slices int
}

// pairBatches is the number of floor batches measured between two slices.
const pairBatches = 1

// Pair is one slice of a sliced run: the CA's CPU per SVID in it and the
// mean of the floor batches measured just before and just after it.
type Pair struct {
	CAPerSVID time.Duration
	Floor     time.Duration
}

// Ratio is the slice's CA CPU per SVID over its floor.
func (p Pair) Ratio() float64 { return float64(p.CAPerSVID) / float64(p.Floor) }

// Result is what a run measured.
type Result struct {
	Requests     int
	Errors       int
	ErrorsByCode map[string]int
	Elapsed      time.Duration
	P50          time.Duration
	P90          time.Duration
	P99          time.Duration
	Max          time.Duration
	// TokenReviews is the number of TokenReviews the CA sent during the
	// run, or -1 if not known.
	TokenReviews float64
	// ClientCPU is the CPU time this process (the load generator) used
	// during the measured run; ServerCPU is the CA's, read from its
	// process_cpu_seconds_total when MetricsURL is set, or -1.
	ClientCPU time.Duration
	ServerCPU time.Duration
	// ServerUser and ServerSys split ServerCPU when it was read from
	// /proc (Config.ServerPID); otherwise they are -1.
	ServerUser, ServerSys time.Duration
	// ServerCounts are the CA's system calls and context switches during
	// the run, when Config.ServerPID is set and its /proc files could be
	// read; otherwise nil.
	ServerCounts *ProcCounts
	// Floor is the crypto floor measured before and after the run (both
	// sets of samples), or nil.
	Floor *Floor
	// FloorCPUs lists the CPUs the floor was measured on (those the CA
	// may run on, Config.ServerPID), or is empty: any of this machine's.
	FloorCPUs string
	// BusyFloor is the crypto floor measured after the run on every core
	// at once (MeasureFloorBusy), or nil: the floor of the operations when
	// they run on a machine as busy as the CA's at saturation.
	BusyFloor *Floor
	// Paired are the slices of a sliced run (Config.Slices), in order.
	Paired []Pair
	// OtherCPU is the share of this machine's CPU time during the run
	// that the threads of other processes than the CA and the load
	// generator spent running (from their schedstat files; a thread that
	// ends during the run is missed), when Config.ServerPID is
	// set; otherwise -1. It is the load of the machine's other work, which
	// the load average cannot tell from the run's own.
	OtherCPU float64
	// Interleaved is, for a sliced run, the CA's CPU per SVID over all its
	// slices against the mean of the floor batches measured between them:
	// both averaged over the same stretch of time.
	Interleaved Pair
}

// PairedRatio returns the median, least and greatest CA/floor ratio of
// r's slices; ok is false if the run was not sliced.
func (r *Result) PairedRatio() (median, least, most float64, ok bool) {
	if len(r.Paired) == 0 {
		return 0, 0, 0, false
	}
	rs := make([]float64, len(r.Paired))
	for i, p := range r.Paired {
		rs[i] = p.Ratio()
	}
	slices.Sort(rs)
	return rs[len(rs)/2], rs[0], rs[len(rs)-1], true
}

// Rate is the successful requests per second.
func (r *Result) Rate() float64 {
	return float64(r.Requests-r.Errors) / r.Elapsed.Seconds()
}

// Print writes r as a short report.
func (r *Result) Print(w io.Writer, cfg Config) {
	fmt.Fprintf(w, "requests      %d in %s (%d errors)\n", r.Requests, r.Elapsed.Round(time.Millisecond), r.Errors)
	for code, n := range r.ErrorsByCode {
		fmt.Fprintf(w, "  error %-10s %d\n", code, n)
	}
	fmt.Fprintf(w, "throughput    %.0f CSR/s at concurrency %d over %d connections", r.Rate(), cfg.Concurrency, cfg.Connections)
	if cfg.Rate > 0 {
		fmt.Fprintf(w, ", paced at %d/s (latency from each request's due time)", cfg.Rate)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "latency       p50 %s  p90 %s  p99 %s  max %s\n", us(r.P50), us(r.P90), us(r.P99), us(r.Max))
	if r.TokenReviews >= 0 {
		fmt.Fprintf(w, "tokenreviews  %.0f sent by the CA during the run\n", r.TokenReviews)
	}
	if n := r.Requests; n > 0 {
		fmt.Fprintf(w, "cpu per CSR   load generator %s", us(r.ClientCPU/time.Duration(n)))
		if r.ServerCPU >= 0 {
			fmt.Fprintf(w, ", CA %s (CA alone could do %.0f CSR/s per core)", us(r.ServerCPU/time.Duration(n)), float64(n)/r.ServerCPU.Seconds())
			if r.ServerUser >= 0 {
				fmt.Fprintf(w, "; CA user %s sys %s (/proc)", us(r.ServerUser/time.Duration(n)), us(r.ServerSys/time.Duration(n)))
			}
		}
		fmt.Fprintln(w)
	}
	if c := r.ServerCounts; c != nil && r.Requests > 0 {
		n := float64(r.Requests)
		fmt.Fprintf(w, "CA per CSR    %.2f read and %.2f write syscalls, %.2f voluntary and %.2f involuntary context switches (/proc)\n",
			float64(c.ReadCalls)/n, float64(c.WriteCalls)/n, float64(c.VoluntarySwitches)/n, float64(c.InvoluntarySwitches)/n)
	}
	if r.OtherCPU >= 0 {
		fmt.Fprintf(w, "other work    %.1f%% of this machine's CPU time during the run went to processes other than the CA and the load generator\n", 100*r.OtherCPU)
	}
	if r.Floor != nil {
		on := ""
		if r.FloorCPUs != "" {
			on = ", on the CA's CPUs " + r.FloorCPUs
		}
		fmt.Fprintf(w, "crypto floor  %s%s\n", r.Floor, on)
		if ok := r.Requests - r.Errors; ok > 0 && r.ServerCPU >= 0 {
			perSVID := r.ServerCPU / time.Duration(ok)
			fmt.Fprintf(w, "CA/floor      %.2fx (CA CPU per SVID %s / floor %s; %.2fx to %.2fx over the floor's batches)\n",
				float64(perSVID)/float64(r.Floor.PerOp), us(perSVID), us(r.Floor.PerOp),
				float64(perSVID)/float64(r.Floor.Max()), float64(perSVID)/float64(r.Floor.Min()))
		}
	}
	if med, least, most, ok := r.PairedRatio(); ok {
		fmt.Fprintf(w, "CA/floor pair %.2fx median of %d slices, each against the floor measured just before and after it (%.2fx to %.2fx); %.2fx over them all (CA %s per SVID / floor mean %s)\n",
			med, len(r.Paired), least, most, r.Interleaved.Ratio(), us(r.Interleaved.CAPerSVID), us(r.Interleaved.Floor))
	}
	if r.BusyFloor != nil {
		fmt.Fprintf(w, "busy floor    %s, every core at once\n", r.BusyFloor)
		if ok := r.Requests - r.Errors; ok > 0 && r.ServerCPU >= 0 {
			fmt.Fprintf(w, "CA/busy floor %.2fx\n", float64(r.ServerCPU/time.Duration(ok))/float64(r.BusyFloor.PerOp))
		}
	}
}

func us(d time.Duration) string { return d.Round(time.Microsecond).String() }

func (c *Config) defaults() error {
	if c.Addr == "" || c.Roots == nil {
		return errors.New("loadgen: Addr and Roots are required")
	}
	if len(c.Tokens) == 0 {
		return errors.New("loadgen: no tokens")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.Connections <= 0 {
		c.Connections = 4
	}
	if c.Duration <= 0 && c.Requests <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = time.Second
	}
	if len(c.CSRs) == 0 {
		csrs, err := MakeCSRs(256)
		if err != nil {
			return err
		}
		c.CSRs = csrs
	}
	return nil
}

// MakeCSRs returns n PEM CSRs for fresh P-256 keys, with no SAN.
func MakeCSRs(n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			return nil, err
		}
		out[i] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	return out, nil
}

// Run drives the CA as cfg says and returns what it measured.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	clients := make([]*caclient.Client, cfg.Connections)
	for i := range clients {
		c, err := caclient.New(caclient.Config{Addr: cfg.Addr, Roots: cfg.Roots, ServerName: cfg.ServerName})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		clients[i] = c
	}
	duration, requests := cfg.Duration, cfg.Requests
	if cfg.Once {
		duration, requests = 0, len(cfg.Tokens)
	} else {
		// Warm up: connect, and let the CA cache every token.
		wctx, cancel := context.WithTimeout(ctx, cfg.Warmup+30*time.Second)
		for i, tok := range cfg.Tokens {
			if _, err := clients[i%len(clients)].CreateCertificate(wctx, tok, cfg.CSRs[i%len(cfg.CSRs)], 0); err != nil {
				cancel()
				return nil, fmt.Errorf("loadgen: warm-up request failed: %w", err)
			}
		}
		cancel()
		run(ctx, cfg, clients, cfg.Warmup, 0)
	}

	var (
		floor     *Floor
		floorCPUs *unix.CPUSet
	)
	if cfg.FloorBatches > 0 {
		if cfg.ServerPID > 0 {
			var err error
			if floorCPUs, err = serverCPUs(cfg.ServerPID); err != nil {
				return nil, err
			}
		}
		f, err := MeasureFloorOn(floorCPUs, cfg.FloorBatches, floorBatchSize)
		if err != nil {
			return nil, err
		}
		floor = f
	}
	before := scrape(ctx, cfg.MetricsURL)
	u0, s0, procErr := procCPU(cfg.ServerPID)
	counts0, countsErr := serverCounts(cfg.ServerPID)
	others0, othersErr := readOthersTime(cfg.ServerPID)
	cpu0 := processCPU()
	var res *Result
	if n := cfg.Slices; n > 1 && duration > 0 && cfg.Rate == 0 && floor != nil && cfg.ServerPID > 0 {
		var err error
		if res, err = runSliced(ctx, cfg, clients, floorCPUs, duration, n); err != nil {
			return nil, err
		}
	} else {
		res = run(ctx, cfg, clients, duration, requests).result()
		res.ClientCPU = processCPU() - cpu0
	}
	after := scrape(ctx, cfg.MetricsURL)
	others1, othersErr1 := readOthersTime(cfg.ServerPID)
	u1, s1, procErr1 := procCPU(cfg.ServerPID)
	if counts1, err := serverCounts(cfg.ServerPID); err == nil && countsErr == nil {
		d := counts1.Sub(counts0)
		res.ServerCounts = &d
	}
	if floor != nil {
		f, err := MeasureFloorOn(floorCPUs, cfg.FloorBatches, floorBatchSize)
		if err != nil {
			return nil, err
		}
		floor.merge(f)
		res.Floor = floor
		if floorCPUs != nil {
			res.FloorCPUs = cpuList(floorCPUs)
		}
		if res.BusyFloor, err = MeasureFloorBusy(cfg.FloorBatches, floorBatchSize, runtime.NumCPU()); err != nil {
			return nil, err
		}
	}
	res.TokenReviews, res.ServerCPU = -1, -1
	if before != nil && after != nil {
		res.TokenReviews = after["castellan_tokenreviews_total"] - before["castellan_tokenreviews_total"]
		if cpu, ok := after["process_cpu_seconds_total"]; ok {
			res.ServerCPU = time.Duration((cpu - before["process_cpu_seconds_total"]) * float64(time.Second))
		}
	}
	res.ServerUser, res.ServerSys = -1, -1
	if cfg.ServerPID > 0 {
		if err := errors.Join(procErr, procErr1); err != nil {
			return nil, err
		}
		res.ServerUser, res.ServerSys = u1-u0, s1-s0
		res.ServerCPU = res.ServerUser + res.ServerSys
	}
	if othersErr == nil && othersErr1 == nil && others1.machine > others0.machine {
		res.OtherCPU = float64(others1.threads.since(others0.threads)) / float64(others1.machine-others0.machine)
	}
	return res, nil
}

// othersTime is a reading of the machine's other work: the time on a CPU
// of the threads of every process but the CA and this one, and the CPU
// time the machine has had.
type othersTime struct {
	threads threadTimes
	machine time.Duration
}

// readOthersTime reads othersTime, when the CA's process id is set:
// without it, the others would include the CA.
func readOthersTime(caPID int) (othersTime, error) {
	if caPID <= 0 {
		return othersTime{}, errors.New("loadgen: no CA process id")
	}
	m, err := machineTime()
	if err != nil {
		return othersTime{}, err
	}
	threads, err := readOthers(caPID, os.Getpid())
	return othersTime{threads, m}, err
}

// runSliced runs for d in n slices, with pairBatches floor batches
// measured before the first and after each, and pairs each slice's CPU
// per SVID (ReadRuntime, to the nanosecond) with the floor around it. The
// CPU the CA spends between slices is idle time and counts for no slice.
func runSliced(ctx context.Context, cfg Config, clients []*caclient.Client, cpus *unix.CPUSet, d time.Duration, n int) (*Result, error) {
	gap, err := MeasureFloorOn(cpus, pairBatches, floorBatchSize)
	if err != nil {
		return nil, err
	}
	var (
		all           sample
		pairs         []Pair
		client, caCPU time.Duration // the floor batches are not the load generator's
		svids         int
		floors        = slices.Clone(gap.Samples) // every batch between the slices
	)
	for range n {
		r0, err := ReadRuntime(cfg.ServerPID)
		if err != nil {
			return nil, err
		}
		c0 := processCPU()
		sm := run(ctx, cfg, clients, d/time.Duration(n), 0)
		client += processCPU() - c0
		r1, err := ReadRuntime(cfg.ServerPID)
		if err != nil {
			return nil, err
		}
		next, err := MeasureFloorOn(cpus, pairBatches, floorBatchSize)
		if err != nil {
			return nil, err
		}
		floors = append(floors, next.Samples...)
		if ok := len(sm.lat) - sm.nerr; ok > 0 {
			around := append(slices.Clone(gap.Samples), next.Samples...)
			pairs = append(pairs, Pair{CAPerSVID: (r1 - r0) / time.Duration(ok), Floor: meanOf(around)})
			caCPU += r1 - r0
			svids += ok
		}
		all.add(sm)
		gap = next
	}
	res := all.result()
	res.Paired, res.ClientCPU = pairs, client
	if svids > 0 {
		res.Interleaved = Pair{CAPerSVID: caCPU / time.Duration(svids), Floor: meanOf(floors)}
	}
	return res, ctx.Err()
}

// meanOf returns the mean of ds.
func meanOf(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// sample is what one stretch of load measured.
type sample struct {
	lat     []time.Duration
	errs    map[string]int
	nerr    int
	elapsed time.Duration
}

// add appends o's measurements to s's.
func (s *sample) add(o *sample) {
	s.lat = append(s.lat, o.lat...)
	if s.errs == nil {
		s.errs = map[string]int{}
	}
	for k, v := range o.errs {
		s.errs[k] += v
	}
	s.nerr += o.nerr
	s.elapsed += o.elapsed
}

// result summarizes s.
func (s *sample) result() *Result {
	res := &Result{Requests: len(s.lat), Errors: s.nerr, ErrorsByCode: s.errs, Elapsed: s.elapsed, OtherCPU: -1}
	if len(s.lat) > 0 {
		lat := slices.Clone(s.lat)
		slices.Sort(lat)
		pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
		res.P50, res.P90, res.P99, res.Max = pct(.50), pct(.90), pct(.99), lat[len(lat)-1]
	}
	return res
}

func run(ctx context.Context, cfg Config, clients []*caclient.Client, d time.Duration, limit int) *sample {
	parent := ctx // the caller's: ends requests in flight too
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d > 0 {
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var (
		next   atomic.Int64
		mu     sync.Mutex
		lat    []time.Duration
		errs   = map[string]int{}
		wg     sync.WaitGroup
		nerr   int
		start  = time.Now()
		perCap = 1 << 16
	)
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			local := make([]time.Duration, 0, perCap)
			localErr := map[string]int{}
			c := clients[w%len(clients)]
			var pace *time.Timer // one timer a worker, reset for each due time
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if limit > 0 && i >= int64(limit) {
					break
				}
				// A request started before the end of the run is allowed to
				// finish: cutting it off would count the run's own deadline
				// (which the server may see first) as the CA's error. The
				// caller's cancellation still ends it.
				t0 := time.Now()
				if cfg.Rate > 0 {
					t0 = start.Add(time.Duration(i) * time.Second / time.Duration(cfg.Rate))
					if wait := time.Until(t0); wait > 0 {
						if pace == nil {
							pace = time.NewTimer(wait)
						} else {
							pace.Reset(wait)
						}
						select {
						case <-ctx.Done():
							continue
						case <-pace.C:
						}
					}
				}
				rctx, rcancel := context.WithTimeout(parent, requestTimeout)
				_, err := c.CreateCertificate(rctx, cfg.Tokens[int(i)%len(cfg.Tokens)], cfg.CSRs[int(i)%len(cfg.CSRs)], 0)
				rcancel()
				if err != nil {
					localErr[status.Code(err).String()]++
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			for k, v := range localErr {
				errs[k] += v
				nerr += v
			}
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return &sample{lat: lat, errs: errs, nerr: nerr, elapsed: time.Since(start)}
}

// scrape sums, per metric name, the samples of the metrics a run reports
// (castellan_tokenreviews_total, process_cpu_seconds_total) from a
// Prometheus text endpoint. It returns nil when the endpoint cannot be read.
func scrape(ctx context.Context, url string) map[string]float64 {
	if url == "" {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{"castellan_tokenreviews_total": 0}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"castellan_tokenreviews_total", "process_cpu_seconds_total"} {
			if !strings.HasPrefix(line, name) {
				continue
			}
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				out[name] += v
			}
		}
	}
	return out
}

// serverCounts reads the CA's ProcCounts, when pid is set.
func serverCounts(pid int) (ProcCounts, error) {
	if pid <= 0 {
		return ProcCounts{}, errors.New("loadgen: no CA process id")
	}
	return ReadProcCounts(pid)
}

// processCPU returns the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU returns the user and system CPU time of process pid from
// /proc/<pid>/stat, or zeros when pid is 0.
func procCPU(pid int) (user, sys time.Duration, err error) {
	if pid <= 0 {
		return 0, 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("loadgen: CA CPU time: %w", err)
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, 0, fmt.Errorf("loadgen: /proc/%d/stat: unexpected format", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("loadgen: /proc/%d/stat: %w", pid, err)
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(u) * time.Second / ticks, time.Duration(st) * time.Second / ticks, nil
}
