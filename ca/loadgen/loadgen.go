// Package loadgen drives a CA's certificate service with pre-made CSRs and
// tokens and reports throughput and latency. It measures; it asserts
// nothing.
package loadgen

import (
	"bufio"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"google.golang.org/grpc/status"
)

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
}

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
	fmt.Fprintf(w, "throughput    %.0f CSR/s at concurrency %d over %d connections\n", r.Rate(), cfg.Concurrency, cfg.Connections)
	fmt.Fprintf(w, "latency       p50 %s  p90 %s  p99 %s  max %s\n", us(r.P50), us(r.P90), us(r.P99), us(r.Max))
	if r.TokenReviews >= 0 {
		fmt.Fprintf(w, "tokenreviews  %.0f sent by the CA during the run\n", r.TokenReviews)
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

	before := scrapeTokenReviews(ctx, cfg.MetricsURL)
	res := run(ctx, cfg, clients, cfg.Duration, cfg.Requests)
	after := scrapeTokenReviews(ctx, cfg.MetricsURL)
	res.TokenReviews = -1
	if before >= 0 && after >= 0 {
		res.TokenReviews = after - before
	}
	return res, nil
}

func run(ctx context.Context, cfg Config, clients []*caclient.Client, d time.Duration, limit int) *Result {
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
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if limit > 0 && i >= int64(limit) {
					break
				}
				t0 := time.Now()
				_, err := c.CreateCertificate(ctx, cfg.Tokens[int(i)%len(cfg.Tokens)], cfg.CSRs[int(i)%len(cfg.CSRs)], 0)
				if err != nil {
					if ctx.Err() != nil {
						break // the run ended mid-request
					}
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
	res := &Result{Requests: len(lat), Errors: nerr, ErrorsByCode: errs, Elapsed: time.Since(start)}
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
		res.P50, res.P90, res.P99, res.Max = pct(.50), pct(.90), pct(.99), lat[len(lat)-1]
	}
	return res
}

// scrapeTokenReviews sums castellan_tokenreviews_total from a Prometheus
// text endpoint, or returns -1.
func scrapeTokenReviews(ctx context.Context, url string) float64 {
	if url == "" {
		return -1
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	total, seen := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "castellan_tokenreviews_total") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
			seen = true
		}
	}
	if !seen {
		return 0
	}
	return total
}
