package sds_test

import (
	"bytes"
	"crypto"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/sds/sdsclient/sdsclienttest"
)

const (
	testID      = "spiffe://cluster.local/ns/default/sa/web"
	waitTimeout = 10 * time.Second
)

// env is a real SDS server on a Unix socket, serving a store the test
// controls, and a client connected to it.
type env struct {
	t      *testing.T
	ca     *svidstoretest.CA
	store  *svidstore.Store
	reg    *prometheus.Registry
	socket string
	client *sdsclient.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := newEmptyEnv(t)
	e.store.SetSVID(e.ca.Issue(t, testID, time.Hour))
	e.store.SetBundle(e.ca.Bundle(t))
	return e
}

// newEmptyEnv is newEnv with nothing in the store yet.
func newEmptyEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, ca: svidstoretest.NewCA(t, "test root"), store: svidstore.New(), reg: prometheus.NewRegistry()}
	t.Cleanup(e.store.Close)
	e.socket = filepath.Join(socketDir(t), "sds.sock")
	e.serve(e.store)
	c, err := sdsclient.New(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.client = c
	return e
}

func (e *env) serve(src sds.Source) {
	srv, err := sds.New(src, sds.WithRegisterer(e.reg))
	if err != nil {
		e.t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	lis, err := net.Listen("unix", e.socket)
	if err != nil {
		e.t.Fatal(err)
	}
	go g.Serve(lis)
	e.t.Cleanup(g.Stop)
}

// socketDir returns a short temporary directory: Unix socket paths are
// limited to about 100 bytes, and t.TempDir embeds the test name.
func socketDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// rotate installs a new SVID with a new key and returns it.
func (e *env) rotate() *svidstore.SVID {
	e.t.Helper()
	svid := e.ca.Issue(e.t, testID, time.Hour)
	e.store.SetSVID(svid)
	return svid
}

// newRoot installs a new trust bundle and returns it.
func (e *env) newRoot() *svidstore.Bundle {
	e.t.Helper()
	b := svidstoretest.NewCA(e.t, "another root").Bundle(e.t)
	e.store.SetBundle(b)
	return b
}

func (e *env) current() svidstore.Snapshot {
	snap, _ := e.store.Load()
	return snap
}

// metric returns the value of the counter or gauge name with label
// api=api.
func (e *env) metric(name, api string) float64 {
	e.t.Helper()
	return testmetric.Sum(e.t, e.reg, name, api)
}

// waitMetric waits until metric name reaches want: the server has then
// processed the requests the test sent.
func (e *env) waitMetric(name, api string, want float64) {
	e.t.Helper()
	testpoll.UntilNil(e.t, func() error {
		got := e.metric(name, api)
		if got > want {
			e.t.Fatalf("%s{api=%q} = %v, want %v", name, api, got, want)
		}
		if got != want {
			return fmt.Errorf("%s{api=%q} = %v, want %v", name, api, got, want)
		}
		return nil
	})
}

// sotw and delta are the tests' streams, whose responses are received in
// the background.
type (
	sotw  = sdsclienttest.SotW
	delta = sdsclienttest.Delta
)

func (e *env) openSotW() *sotw {
	e.t.Helper()
	return sdsclienttest.OpenSotW(e.t, e.client)
}

func (e *env) openDelta(initial map[string]string) *delta {
	e.t.Helper()
	return sdsclienttest.OpenDelta(e.t, e.client, initial)
}

// checkDefault checks that secret holds svid's chain and key.
func checkDefault(t *testing.T, secret *tlsSecret, svid *svidstore.SVID) {
	t.Helper()
	if secret == nil {
		t.Fatal("no default secret")
	}
	chain, key, err := sdsclient.TLSCertificate(secret)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(chain[0].Raw, svid.X509.Certificates[0].Raw) {
		t.Fatalf("default holds certificate serial %s, want %s", chain[0].SerialNumber, svid.X509.Certificates[0].SerialNumber)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(svid.X509.PrivateKey.Public()) {
		t.Fatal("default holds another key")
	}
}

// checkRoot checks that secret holds bundle.
func checkRoot(t *testing.T, secret *tlsSecret, bundle *svidstore.Bundle) {
	t.Helper()
	if secret == nil {
		t.Fatal("no ROOTCA secret")
	}
	certs, err := sdsclient.TrustedCA(secret)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != len(bundle.Certificates) || !bytes.Equal(certs[0].Raw, bundle.Certificates[0].Raw) {
		t.Fatalf("ROOTCA holds %d certificates, not the current bundle", len(certs))
	}
}

type tlsSecret = tlsv3.Secret
