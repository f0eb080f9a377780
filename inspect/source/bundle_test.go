package source_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestBundle(t *testing.T) {
	p := testpki.New(t)
	dir := t.TempDir()
	sb := spiffebundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.test"), nil)
	sb.AddX509Authority(p.Root)
	sbJSON, err := sb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/bundle", func(w http.ResponseWriter, _ *http.Request) { w.Write(testpki.CertPEM(p.Root)) })
	mux.HandleFunc("/bundle.spiffe", func(w http.ResponseWriter, _ *http.Request) { w.Write(sbJSON) })
	mux.HandleFunc("/html", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>hi</html>")) })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name, ref, wantName, wantErr string
	}{
		{name: "PEM file", ref: testpki.WriteFile(t, dir, "root.pem", testpki.CertPEM(p.Root))},
		{name: "DER file", ref: testpki.WriteFile(t, dir, "root.der", p.Root.Raw)},
		{name: "SPIFFE bundle file", ref: testpki.WriteFile(t, dir, "bundle.json", sbJSON)},
		{name: "PEM URL", ref: srv.URL + "/bundle", wantName: srv.URL + "/bundle"},
		{name: "SPIFFE bundle URL", ref: srv.URL + "/bundle.spiffe"},
		{name: "not found", ref: srv.URL + "/missing", wantErr: "HTTP status 404"},
		{name: "not certificates", ref: srv.URL + "/html", wantErr: "input is not PEM, and not DER"},
		{name: "bad JSON", ref: testpki.WriteFile(t, dir, "bad.json", []byte(`{"keys": 3}`)), wantErr: "not a SPIFFE bundle"},
		{name: "missing file", ref: dir + "/none.pem", wantErr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, name, err := source.Bundle(context.Background(), tt.ref, srv.Client())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != 1 || !certs[0].Equal(p.Root) {
				t.Errorf("got %d certificates, want the root", len(certs))
			}
			if tt.wantName != "" && name != tt.wantName {
				t.Errorf("name = %q, want %q", name, tt.wantName)
			}
			if !strings.HasPrefix(tt.ref, "http") && name != "file:"+tt.ref {
				t.Errorf("name = %q, want file:%s", name, tt.ref)
			}
		})
	}
}
