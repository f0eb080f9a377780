package xds_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

type source struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s source) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s source) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle, nil
}

// TestSourceTLSConfig: the server presents the source's SVID and verifies
// clients against its bundle.
func TestSourceTLSConfig(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	pki := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/castellan-system/sa/castellan-authz"))
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/castellan-system/sa/castellan-authz")
	src := source{
		svid:   &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{pki.Leaf, pki.Intermediate}, PrivateKey: pki.LeafKey},
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{pki.Root}),
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", xds.SourceTLSConfig(src, td))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
			c.Close()
		}
		done <- err
	}()
	roots := x509.NewCertPool()
	roots.AddCert(pki.Root)
	for _, withCert := range []bool{true, false} {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost"}
		if withCert {
			cfg.Certificates = []tls.Certificate{pki.TLSCertificate()}
		}
		conn, err := tls.Dial("tcp", lis.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(pki.Leaf) {
			t.Error("server does not present the source's SVID")
		}
		_, _ = conn.Read(make([]byte, 1)) // the server's verdict on our certificate
		conn.Close()
		err = <-done
		if withCert != (err == nil) {
			t.Errorf("client certificate %v: server handshake error %v", withCert, err)
		}
		if withCert {
			go func() {
				c, err := lis.Accept()
				if err == nil {
					err = c.(*tls.Conn).Handshake()
					c.Close()
				}
				done <- err
			}()
		}
	}
}
