package harness

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// CAProcess is "castellan ca" running as its own process, built from the
// main module by Binary, so that its memory and logs are its own.
type CAProcess struct {
	GRPCAddr, HTTPAddr string
	DataDir, RootFile  string
	ServerName         string
	Cmd                *exec.Cmd

	logs   *logCounter
	exited chan struct{}
}

// StartCAProcess starts "castellan ca" on 127.0.0.1 ports with a new data
// directory, the flags args added, and waits until /readyz answers. It is
// stopped (SIGTERM) when the test ends.
func StartCAProcess(t testing.TB, args ...string) *CAProcess {
	t.Helper()
	bin := Binary(t, "castellan")
	p := &CAProcess{
		GRPCAddr:   "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		HTTPAddr:   "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		DataDir:    filepath.Join(t.TempDir(), "data"),
		ServerName: CAServerName,
		logs:       &logCounter{},
		exited:     make(chan struct{}),
	}
	p.RootFile = filepath.Join(p.DataDir, "root-cert.pem")
	all := append([]string{"ca", "--data-dir", p.DataDir, "--grpc-addr", p.GRPCAddr, "--http-addr", p.HTTPAddr,
		"--server-dns-name", CAServerName, "--server-dns-name", "localhost"}, args...)
	p.Cmd = exec.Command(bin, all...)
	p.Cmd.Stderr = p.logs
	p.Cmd.Stdout = p.logs
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("harness: starting castellan ca: %v", err)
	}
	go func() { _ = p.Cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.exited
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + p.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("harness: castellan ca exited: %s", p.logs.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: castellan ca not ready after 60s (%v): %s", err, p.logs.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Roots returns a pool holding the CA's trust bundle.
func (p *CAProcess) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(p.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatal("harness: the CA's trust bundle holds no certificate")
	}
	return pool
}

// Metrics scrapes the CA's /metrics.
func (p *CAProcess) Metrics(t testing.TB) Metrics {
	t.Helper()
	return ScrapeMetrics(t, "http://"+p.HTTPAddr+"/metrics")
}

// Memory returns the CA's resident set size now and at its peak (VmRSS
// and VmHWM), in bytes.
func (p *CAProcess) Memory(t testing.TB) (rss, peak int64) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatalf("harness: reading the CA's memory: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

// LogLines returns the number of lines the CA has written to stderr and
// stdout, and the lines that contain substr.
func (p *CAProcess) LogLines(substr string) (all, matching int) {
	return p.logs.count(substr)
}

// Logs returns the last lines the CA wrote, for failure messages.
func (p *CAProcess) Logs() string { return p.logs.tail() }

// logCounter counts log lines and keeps the last 64 KiB of output.
type logCounter struct {
	mu    sync.Mutex
	lines []string // capped; counts below are complete
	all   int
	last  bytes.Buffer
	part  []byte
}

func (l *logCounter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, b...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := string(l.part[:i])
		l.part = l.part[i+1:]
		l.all++
		if len(l.lines) < 100000 {
			l.lines = append(l.lines, line)
		}
	}
	l.last.Write(b)
	if l.last.Len() > 64<<10 {
		keep := append([]byte(nil), l.last.Bytes()[l.last.Len()-32<<10:]...)
		l.last.Reset()
		l.last.Write(keep)
	}
	return len(b), nil
}

func (l *logCounter) count(substr string) (all, matching int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			matching++
		}
	}
	return l.all, matching
}

func (l *logCounter) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last.String()
}

// ScrapeMetrics reads a Prometheus text endpoint.
func ScrapeMetrics(t testing.TB, url string) Metrics {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("harness: scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("harness: scraping metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("harness: parsing metrics: %v", err)
	}
	return Metrics(families)
}
