package inspect_test

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files")

// scenario is one deterministic input with the time it is judged at.
type scenario struct {
	name string
	in   inspect.Input
	now  time.Time
	want inspect.Status
}

func scenarios(t testing.TB) []scenario {
	t.Helper()
	root := rootCA(t, "root", epoch.AddDate(-1, 0, 0), 10*365*24*time.Hour)
	inter := intermediateCA(t, "intermediate", root, epoch.AddDate(0, -1, 0), 365*24*time.Hour)
	other := rootCA(t, "other-root", epoch.AddDate(-1, 0, 0), 10*365*24*time.Hour)
	const id = "spiffe://cluster.local/ns/default/sa/sleep"
	day := 24 * time.Hour

	leafKey := ecKey(t, "leaf")
	tmpl := leafTemplate(id, epoch, day)
	tmpl.DNSNames = []string{"sleep.default.svc"}
	leaf := sign(t, tmpl, leafKey.Public(), inter)

	noEKU := leafTemplate(id, epoch, day)
	noEKU.ExtKeyUsage = nil
	leafNoEKU := sign(t, noEKU, leafKey.Public(), inter)

	bad := leafTemplate(id, epoch, day)
	bad.URIs = append(bad.URIs, mustURL("spiffe://cluster.local/ns/default/sa/other"))
	leafBad := sign(t, bad, leafKey.Public(), inter)

	server := &x509.Certificate{
		SerialNumber: leaf.SerialNumber,
		Subject:      pkix.Name{CommonName: "api.example.test"},
		NotBefore:    epoch,
		NotAfter:     epoch.Add(90 * day),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"api.example.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	serverLeaf := sign(t, server, rsaKey(t).Public(), root)

	bundle := "file:root-cert.pem"
	return []scenario{
		{
			name: "svid-valid",
			in: inspect.Input{
				Source: "file:cert-chain.pem", Chain: []*x509.Certificate{leaf, inter.cert},
				Bundle: []*x509.Certificate{root.cert}, BundleSource: bundle,
				PublicKey: leafKey.Public(), KeySource: "file:key.pem",
			},
			now:  epoch.Add(6 * time.Hour),
			want: inspect.StatusValid,
		},
		{
			name: "svid-warning",
			in: inspect.Input{
				Source: "sds:unix:///var/run/secrets/workload-spiffe-uds/socket", Chain: []*x509.Certificate{leafNoEKU, inter.cert},
				Bundle: []*x509.Certificate{root.cert}, BundleSource: "sds:ROOTCA",
				PublicKey: leafKey.Public(), KeySource: "sds:default",
			},
			now:  epoch.Add(20 * time.Hour),
			want: inspect.StatusWarning,
		},
		{
			name: "svid-invalid",
			in: inspect.Input{
				Source: "file:cert-chain.pem", Chain: []*x509.Certificate{leafBad},
				Bundle: []*x509.Certificate{root.cert}, BundleSource: bundle,
				PublicKey: ecKey(t, "other").Public(), KeySource: "file:key.pem",
			},
			now:  epoch.Add(25 * time.Hour),
			want: inspect.StatusInvalid,
		},
		{
			name: "cacerts",
			in: inspect.Input{
				Source: "secret:istio-system/cacerts[cert-chain.pem]", Chain: []*x509.Certificate{inter.cert, root.cert},
				Bundle: []*x509.Certificate{root.cert}, BundleSource: "secret:istio-system/cacerts[root-cert.pem]",
				PublicKey: inter.key.Public(), KeySource: "secret:istio-system/cacerts[ca-key.pem]",
			},
			now:  epoch.Add(6 * time.Hour),
			want: inspect.StatusValid,
		},
		{
			name: "tls-server",
			in: inspect.Input{
				Source: "tls:127.0.0.1:8443", Chain: []*x509.Certificate{serverLeaf},
				Notes: []string{"negotiated TLS 1.3 with TLS_AES_128_GCM_SHA256"},
			},
			now:  epoch.Add(30 * day),
			want: inspect.StatusValid,
		},
		{
			name: "self-signed-root",
			in:   inspect.Input{Source: "file:root-cert.pem", Chain: []*x509.Certificate{root.cert}},
			now:  epoch.Add(30 * day),
			want: inspect.StatusValid,
		},
		{
			name: "bundle",
			in: inspect.Input{Source: "file:roots.pem", Chain: []*x509.Certificate{root.cert, other.cert},
				Bundle: []*x509.Certificate{root.cert}, BundleSource: bundle},
			now:  epoch.Add(30 * day),
			want: inspect.StatusValid,
		},
	}
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios(t) {
		t.Run(sc.name, func(t *testing.T) {
			r := inspect.Analyze(sc.in, inspect.Options{Now: sc.now})
			if r.Status != sc.want {
				t.Errorf("status = %s, want %s; findings: %+v", r.Status, sc.want, r.Findings)
			}

			var text, color, short, js bytes.Buffer
			if err := inspect.WriteText(&text, r, inspect.TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := inspect.WriteText(&color, r, inspect.TextOptions{Color: true}); err != nil {
				t.Fatal(err)
			}
			if err := inspect.WriteShort(&short, r, inspect.TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := inspect.WriteJSON(&js, r); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, sc.name+".txt", text.Bytes())
			checkGolden(t, sc.name+".color.txt", color.Bytes())
			checkGolden(t, sc.name+".short.txt", short.Bytes())
			checkGolden(t, sc.name+".json", js.Bytes())

			if bytes.Contains(text.Bytes(), []byte("\x1b[")) || bytes.Contains(short.Bytes(), []byte("\x1b[")) {
				t.Error("plain output holds ANSI escapes")
			}
			if !bytes.Contains(color.Bytes(), []byte("\x1b[")) {
				t.Error("coloured output holds no ANSI escape")
			}
			// The JSON decodes back into the same report.
			var back inspect.Report
			if err := json.Unmarshal(js.Bytes(), &back); err != nil {
				t.Fatalf("JSON does not decode: %v", err)
			}
			var again bytes.Buffer
			if err := inspect.WriteJSON(&again, &back); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), js.Bytes()) {
				t.Error("JSON does not survive a round trip")
			}
		})
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}
