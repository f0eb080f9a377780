package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := Run(ctx, Config{DataDir: t.TempDir(), Out: &out}); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	for _, want := range []string{"SPIFFE ID  spiffe://cluster.local/ns/demo/sa/web", "x509svid.Verify against the CA's bundle: ok", "[1] CN=Castellan Root CA",
		"== SVID over Envoy SDS", "== SVID over the SPIFFE Workload API", "bundle     1 root(s), x509svid.Verify: ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
