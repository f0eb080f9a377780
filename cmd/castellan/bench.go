package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// benchCommands are the load generators under "castellan bench".
func benchCommands() map[string]func(context.Context, []string, io.Writer, io.Writer) error {
	return map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"ca":    runBenchCA,
		"sds":   runBenchSDS,
		"token": runBenchToken,
	}
}

// benchUsage is the usage of "castellan bench" without a subcommand.
const benchUsage = `Usage:
  castellan bench ca|sds|token [flags]

Load generators, each printing its figures (-o json or yaml for a document).

  ca     drive a running CA with pre-made CSRs and tokens: throughput, latency,
         the CA's CPU per SVID against the crypto floor
  sds    open many SDS streams on a running agent and time its rotations
  token  write a JWKS and tokens for a CA run with --jwt-issuer

Run "castellan bench ca|sds|token --help" for the flags.
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmds := benchCommands()
	if len(args) == 0 {
		fmt.Fprint(stderr, benchUsage)
		return usageError{Err: errors.New("a load generator is required: ca, sds or token")}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, benchUsage)
		return nil
	}
	run, ok := cmds[args[0]]
	if !ok {
		return usageError{Err: fmt.Errorf("unknown bench %q: want ca, sds or token", args[0])}
	}
	return run(ctx, args[1:], stdout, stderr)
}

// runBenchCA drives a running CA with pre-made CSRs and tokens.
func runBenchCA(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan bench ca", cliflag.Help{
		Summary: "Drive a running CA with pre-made CSRs and tokens, and print the throughput,\nthe latency and the CA's CPU per SVID against the crypto floor.",
	}, stdout, stderr)
	out := cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = out.Errors(err) }()
	addr := fs.String("addr", "127.0.0.1:15012", "CA gRPC address")
	rootFile := fs.String("root-cert", "", "PEM roots that verify the CA's serving certificate (required)")
	serverName := fs.String("server-name", "localhost", "name to check in the CA's serving certificate")
	metricsURL := fs.String("metrics-url", "", "CA /metrics URL, to count the TokenReviews it sent (e.g. http://127.0.0.1:15014/metrics)")
	tokenFile := fs.String("token-file", "", "file with one bearer token per line (required)")
	conc := fs.Int("concurrency", 64, "requests in flight")
	conns := fs.Int("connections", 4, "gRPC connections")
	dur := fs.Duration("duration", 10*time.Second, "measured run time")
	csrs := fs.Int("csrs", 256, "distinct pre-made CSRs")
	rate := fs.Int("rate", 0, "pace the run at this many requests per second (open loop; latency counts from each request's due time); 0: as fast as the concurrency allows")
	caPID := fs.Int("ca-pid", 0, "the CA's process id on this machine: read its CPU time (user and system) from /proc/<pid>/stat, measure the floor on the CPUs it may run on, and count the machine's other work apart from the CA's")
	floor := fs.Int("floor-batches", 10, "measure the crypto floor (one P-256 verify + one P-256 sign) in this many batches before and after the run, and print the CA's CPU per SVID against it; 0: skip")
	slices := fs.Int("slices", 40, "with --ca-pid and --floor-batches and without --rate, cut the run into this many slices with floor batches between them, and print each slice's CPU per SVID against the floor measured around it (their median is robust to a machine whose speed varies); 0 or 1: one stretch")
	once := fs.Bool("once", false, "use each token for exactly one request, with no warm-up (fresh tokens, as in a rollout); the run ends when all are used")
	junkRate := fs.Int("junk-rate", 0, "meanwhile, flood the CA with this many distinct junk tokens per second (well formed, random signature)")
	junkSource := fs.String("junk-source", "127.0.0.2", "local IP address the junk flood connects from")
	junkIssuer := fs.String("junk-issuer", "", "issuer claim of the junk tokens")
	junkKID := fs.String("junk-kid", "", "key id of the junk tokens")
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *rootFile == "" || *tokenFile == "" {
		return usageError{Err: errors.New("--root-cert and --token-file are required")}
	}
	roots, err := pemfile.ReadCertificates(*rootFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	tokens, err := readLines(*tokenFile)
	if err != nil {
		return err
	}
	pre, err := loadgen.MakeCSRs(*csrs)
	if err != nil {
		return err
	}
	cfg := loadgen.Config{
		Addr: *addr, ServerName: *serverName, Roots: pool, MetricsURL: *metricsURL,
		Tokens: tokens, CSRs: pre, Concurrency: *conc, Connections: *conns, Duration: *dur, Once: *once,
		FloorBatches: *floor, ServerPID: *caPID, Rate: *rate, Slices: *slices,
	}
	var flood chan *loadgen.FloodResult
	fctx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	if *junkRate > 0 {
		flood = make(chan *loadgen.FloodResult, 1)
		fcfg := loadgen.FloodConfig{Addr: *addr, ServerName: *serverName, Roots: pool, SourceIP: *junkSource,
			Rate: *junkRate, Issuer: *junkIssuer, Audience: "istio-ca", KeyID: *junkKID}
		go func() {
			res, err := loadgen.Flood(fctx, fcfg)
			if err != nil {
				fmt.Fprintf(stderr, "junk flood: %v\n", err)
			}
			flood <- res
		}()
		// Let the flood reach its rate before measuring.
		time.Sleep(2 * time.Second)
	}
	res, err := loadgen.Run(ctx, cfg)
	stopFlood()
	if err != nil {
		return err
	}
	var fr *loadgen.FloodResult
	if flood != nil {
		fr = <-flood
	}
	return out.Write(stdout, newBenchCAResult(res, cfg, fr), func(w io.Writer) error {
		res.Print(w, cfg)
		if fr != nil {
			fmt.Fprintf(w, "junk flood    %s\n", fr)
		}
		return nil
	})
}

// runBenchToken writes a JWKS and tokens for a CA started with
// --token-review=false --jwt-issuer ISSUER --jwks-file DIR/jwks.json.
func runBenchToken(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := cliflag.NewFlagSet("castellan bench token", cliflag.Help{
		Summary: "Write a JWKS and tokens for a CA started with --token-review=false\n--jwt-issuer ISSUER --jwks-file DIR/jwks.json.",
	}, stdout, stderr)
	out := cliflag.AddOutput(fs, cliflag.OutputText, cliflag.OutputText, cliflag.OutputJSON, cliflag.OutputYAML)
	defer func() { err = out.Errors(err) }()
	dir := fs.String("out-dir", "", "directory for jwks.json and tokens.txt (required)")
	issuer := fs.String("issuer", "https://bench.castellan.invalid", "token issuer")
	audience := fs.String("audience", "istio-ca", "token audience")
	count := fs.Int("count", 100, "tokens, each for its own service account bench/sa-<i>")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	if err := cliflag.Parse(fs, cliflag.EnvPrefix, args, nil); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{Err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *dir == "" {
		return usageError{Err: errors.New("--out-dir is required")}
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	m, err := authn.NewMinter(*issuer)
	if err != nil {
		return err
	}
	if err := m.WriteJWKS(filepath.Join(*dir, "jwks.json")); err != nil {
		return err
	}
	var b strings.Builder
	for i := 0; i < *count; i++ {
		tok, err := m.Mint("bench", fmt.Sprintf("sa-%d", i), []string{*audience}, *ttl)
		if err != nil {
			return err
		}
		b.WriteString(tok + "\n")
	}
	if err := pemfile.WriteFileAtomic(filepath.Join(*dir, "tokens.txt"), []byte(b.String()), 0o600); err != nil {
		return err
	}
	res := benchTokenResult{JWKS: filepath.Join(*dir, "jwks.json"), Tokens: filepath.Join(*dir, "tokens.txt"), Count: *count}
	return out.Write(stdout, res, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "wrote %s and %d tokens to %s\n", res.JWKS, res.Count, res.Tokens)
		return err
	})
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no tokens", path)
	}
	return out, nil
}
