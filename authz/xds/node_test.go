package xds_test

import (
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/internal/dnsname"
)

func TestParseNodeID(t *testing.T) {
	tests := []struct {
		id      string
		want    xds.Proxy
		wantErr string
	}{
		{id: "sidecar~10.1.2.3~web-5d9f.shop~shop.svc.cluster.local", want: xds.Proxy{Type: "sidecar", IP: "10.1.2.3", Pod: "web-5d9f", Namespace: "shop"}},
		{id: "router~10.1.2.3~gw.a.b~b.svc.example.org", want: xds.Proxy{Type: "router", IP: "10.1.2.3", Pod: "gw.a", Namespace: "b"}},
		{id: "sidecar~10.1.2.3~web.shop", wantErr: "want <type>"},
		{id: "gateway~10.1.2.3~web.shop~shop.svc.cluster.local", wantErr: "not sidecar or router"},
		{id: "sidecar~10.1.2.3~web~shop.svc.cluster.local", wantErr: "not <pod>.<namespace>"},
		{id: "sidecar~10.1.2.3~web.shop~other.svc.cluster.local", wantErr: "not in namespace"},
		{id: "sidecar~10.1.2.3~Web.shop~shop.svc.cluster.local", wantErr: "invalid pod"},
		// Names Kubernetes would refuse name no pod: RFC 1123 rules.
		{id: "sidecar~10.1.2.3~-web.shop~shop.svc.cluster.local", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~web-.shop~shop.svc.cluster.local", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~web..a.shop~shop.svc.cluster.local", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~.web.shop~shop.svc.cluster.local", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~web.-shop~-shop.svc.cluster.local", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~web." + strings.Repeat("s", 64) + "~" + strings.Repeat("s", 64) + ".svc", wantErr: "invalid pod"},
		{id: "sidecar~10.1.2.3~" + strings.Repeat("w", 254) + ".shop~shop.svc", wantErr: "invalid pod"},
		{id: "sidecar~1~" + strings.Repeat("a", 2000) + ".b~b.svc", wantErr: "limit"},
	}
	for _, tt := range tests {
		got, err := xds.ParseNodeID(tt.id)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%.60q: error %v, want %q", tt.id, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("%q: %+v %v, want %+v", tt.id, got, err, tt.want)
		}
	}
}

func FuzzParseNodeID(f *testing.F) {
	f.Add("sidecar~10.1.2.3~web.shop~shop.svc.cluster.local")
	f.Add("router~::1~a.b~b")
	f.Add("~~~")
	f.Fuzz(func(t *testing.T, id string) {
		p, err := xds.ParseNodeID(id)
		if err != nil {
			return
		}
		if !dnsname.IsSubdomain(p.Pod) || !dnsname.IsLabel(p.Namespace) {
			t.Fatalf("%q parsed to %+v", id, p)
		}
	})
}
