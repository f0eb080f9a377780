package ca_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	pb "istio.io/api/security/v1alpha1"
)

// serviceVIP stands for a Kubernetes Service in front of the CA replicas:
// like kube-proxy, it sends each new connection to the next of the
// endpoints it has now, and leaves established connections where they
// are.
type serviceVIP struct {
	mu        sync.Mutex
	endpoints []string
	next      int
}

func (v *serviceVIP) add(addr string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.endpoints = append(v.endpoints, addr)
}

func (v *serviceVIP) dial(ctx context.Context, _ string) (net.Conn, error) {
	v.mu.Lock()
	addr := v.endpoints[v.next%len(v.endpoints)]
	v.next++
	v.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// TestLoadSpreadsAfterScaleOut: clients connected to the one CA replica
// there is move, after --max-connection-age, to a replica added later, as
// Istio's agents do when istiod scales out: the server closes old
// connections (GOAWAY), and the clients' new connections go through the
// Service to any replica.
func TestLoadSpreadsAfterScaleOut(t *testing.T) {
	const clients = 20
	dir := t.TempDir()
	minter, err := authn.NewMinter("https://issuer.castellan.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(dir, "jwks.json")
	if err := minter.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--token-review=false", "--jwt-issuer", minter.Issuer(), "--jwks-file", jwks,
		"--max-connection-age", "2s", "--log-level", "warn"}
	first := harness.StartCAProcess(t, flags...)
	roots := first.Roots(t)

	vip := &serviceVIP{}
	vip.add(first.GRPCAddr)
	tok, err := minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	csrs, err := loadgen.MakeCSRs(1)
	if err != nil {
		t.Fatal(err)
	}
	var conns []*caclient.Client
	for range clients {
		c, err := caclient.New(caclient.Config{
			Addr: "passthrough:///castellan.castellan-system.svc:15012", Roots: roots, ServerName: first.ServerName,
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(vip.dial)},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// round asks every client for an SVID once and returns the replica
	// address each was served by.
	round := func() []string {
		served := make([]string, clients)
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
				var p peer.Peer
				_, err := pb.NewIstioCertificateServiceClient(c.Conn()).CreateCertificate(ctx,
					&pb.IstioCertificateRequest{Csr: string(csrs[0])}, grpc.Peer(&p))
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				served[i] = p.Addr.String()
			}()
		}
		wg.Wait()
		return served
	}
	for _, addr := range round() {
		if addr != first.GRPCAddr {
			t.Fatalf("with one replica, a client was served by %s, want %s", addr, first.GRPCAddr)
		}
	}

	// Scale out: a second replica with the same CA material.
	secondDir := filepath.Join(t.TempDir(), "data")
	copyDir(t, first.DataDir, secondDir)
	second := harness.StartCAProcess(t, append(flags, "--data-dir", secondDir)...)
	vip.add(second.GRPCAddr)
	added := time.Now()

	// Within a generous bound, at least a third of the clients are served
	// by the new replica in one round, and each replica serves some.
	var spread time.Duration
	var onSecond, rounds int
	for deadline := added.Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		rounds++
		onSecond = 0
		for _, addr := range round() {
			if addr == second.GRPCAddr {
				onSecond++
			}
		}
		if onSecond >= clients/3 && onSecond < clients {
			spread = time.Since(added)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 minutes after the second replica was added, %d of %d clients are served by it, want at least %d and not all", onSecond, clients, clients/3)
		}
	}
	firstIssued := first.Metrics(t).Value("castellan_ca_certificates_issued_total")
	secondIssued := second.Metrics(t).Value("castellan_ca_certificates_issued_total")
	if secondIssued == 0 || firstIssued == 0 {
		t.Fatalf("issued: first replica %v, second %v; want both > 0", firstIssued, secondIssued)
	}
	t.Logf("%d clients, --max-connection-age=2s: %d of them on the new replica %s after it was added (%d rounds); SVIDs issued: first replica %v, second %v",
		clients, onSecond, spread.Round(100*time.Millisecond), rounds, firstIssued, secondIssued)
}

// copyDir copies the regular files of src into a new directory dst,
// keeping their modes.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, info.Mode().Perm()); err != nil {
			t.Fatal(fmt.Errorf("copying %s: %w", e.Name(), err))
		}
	}
}
