package agentcmd

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/agent/certdir"
)

// TestServingCertificateFlags: --output-layout and --dns-name, from the
// command line or the environment, as istiod's agent is run.
func TestServingCertificateFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		layout  certdir.Layout
		dns     []string
		wantErr string
	}{
		{name: "defaults", layout: certdir.IstioLayout},
		{name: "istiod", args: []string{"--output-dir=/tls", "--output-layout=istiod", "--dns-name=istiod.istio-system.svc", "--dns-name=istiod.istio-system.svc.cluster.local"},
			layout: certdir.IstiodLayout, dns: []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"}},
		{name: "from the environment", env: map[string]string{"CASTELLAN_OUTPUT_LAYOUT": "istiod", "CASTELLAN_DNS_NAME": "a.svc, b.svc"},
			layout: certdir.IstiodLayout, dns: []string{"a.svc", "b.svc"}},
		{name: "unknown layout", args: []string{"--output-layout=k8s"}, wantErr: "unknown layout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			cfg, _, err := parse("castellan-agent", tt.args, io.Discard, io.Discard, lookup)
			if tt.wantErr != "" {
				var ue UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OutputLayout != tt.layout || !slices.Equal(cfg.DNSNames, tt.dns) {
				t.Fatalf("layout %v, DNS names %q; want %v, %q", cfg.OutputLayout, cfg.DNSNames, tt.layout, tt.dns)
			}
		})
	}
}
