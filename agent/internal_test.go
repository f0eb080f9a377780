package agent

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	a := &Agent{cfg: Config{InitialBackoff: time.Second, MaxBackoff: 30 * time.Second}}
	tests := []struct {
		name     string
		failures int
		lo, hi   time.Duration
	}{
		{"first failure", 1, 750 * time.Millisecond, time.Second},
		{"third failure", 3, 3 * time.Second, 4 * time.Second},
		{"capped", 20, 22500 * time.Millisecond, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 200 {
				d := a.backoff(tt.failures)
				if d < tt.lo || d > tt.hi {
					t.Fatalf("backoff(%d) = %s, want in [%s, %s]", tt.failures, d, tt.lo, tt.hi)
				}
				seen[d] = true
			}
			if len(seen) < 10 {
				t.Fatalf("backoff(%d) has no jitter: %d distinct values", tt.failures, len(seen))
			}
		})
	}
}

func TestRotationDelay(t *testing.T) {
	tests := []struct {
		name             string
		fraction, jitter float64
		lo, hi           float64 // as fractions of the lifetime
	}{
		{"default", 0.5, 0.1, 0.45, 0.55},
		{"no jitter", 0.5, 0, 0.5, 0.5},
		{"late", 0.8, 0.2, 0.7, 0.9},
	}
	const life = 100 * time.Hour
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{cfg: Config{RotateFraction: tt.fraction, RotateJitter: tt.jitter}}
			for range 200 {
				issued := time.Now()
				d := a.rotationDelay(issued, issued.Add(life))
				f := float64(d) / float64(life)
				if f < tt.lo-0.001 || f > tt.hi+0.001 {
					t.Fatalf("rotation at %.3f of the lifetime, want in [%.2f, %.2f]", f, tt.lo, tt.hi)
				}
			}
		})
	}
	// An SVID already past its rotation point is renewed at once.
	a := &Agent{cfg: Config{RotateFraction: 0.5}}
	if d := a.rotationDelay(time.Now().Add(-time.Hour), time.Now().Add(time.Minute)); d != 0 {
		t.Fatalf("overdue rotation waits %s", d)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string
		wantErr string
	}{
		{"plain", "eyJ.a.b", "eyJ.a.b", ""},
		{"trailing newline", "eyJ.a.b\n", "eyJ.a.b", ""},
		{"empty", "\n", "", "empty"},
		{"two tokens", "a b", "", "whitespace"},
		{"too large", strings.Repeat("a", maxTokenSize+1), "", "over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readToken(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), tt.content) && tt.content != "" && tt.content != "\n" {
					t.Fatal("error reveals the token")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("readToken = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := readToken(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyType
		wantErr bool
	}{
		{"", KeyECDSAP256, false},
		{"ECDSA-P256", KeyECDSAP256, false},
		{"rsa-2048", KeyRSA2048, false},
		{"rsa-3072", KeyRSA3072, false},
		{"rsa-1024", "", true},
		{"ed25519", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyType(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseKeyType(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir, err := os.MkdirTemp("", "ls")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)

	t.Run("creates the directory and sets the mode", func(t *testing.T) {
		p := filepath.Join(dir, "a", "b", "socket")
		l, err := listenUnix(p, 0o660)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o660 {
			t.Fatalf("mode %v, %v", fi.Mode(), err)
		}
		if c, err := net.Dial("unix", p); err != nil {
			t.Fatal(err)
		} else {
			c.Close()
		}
	})
	t.Run("refuses a socket in use", func(t *testing.T) {
		p := filepath.Join(dir, "busy")
		l, err := listenUnix(p, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if _, err := listenUnix(p, 0o600); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("second listener: %v", err)
		}
	})
	t.Run("replaces a stale socket", func(t *testing.T) {
		p := filepath.Join(dir, "stale")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		l2, err := listenUnix(p, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		l2.Close()
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatal("socket left behind after Close")
		}
	})
	t.Run("never deletes another kind of file", func(t *testing.T) {
		p := filepath.Join(dir, "file")
		if err := os.WriteFile(p, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := listenUnix(p, 0o600); err == nil {
			t.Fatal("listened over a regular file")
		}
		if b, _ := os.ReadFile(p); string(b) != "keep" {
			t.Fatal("file was changed")
		}
	})
}
