package server

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// scrape returns every series of the registry as "name{labels}" → value.
func scrape(t *testing.T, s *testServer) map[string]float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			out[key] = metricValue(m)
		}
	}
	return out
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// TestIstioMetrics: with IstioMetrics, each of istiod's CA metrics is
// exported and moves as Castellan's do; without, none is.
func TestIstioMetrics(t *testing.T) {
	s := start(t, func(c *Config) { c.IstioMetrics = true })
	ctx := context.Background()
	const me = "spiffe://cluster.local/ns/default/sa/sleep"

	got := scrape(t, s)
	for _, name := range IstioMetricNames {
		if n, err := testutil.GatherAndCount(s.reg, name); err != nil || n == 0 {
			t.Errorf("%s not exported (%d series, %v)", name, n, err)
		}
	}
	if ts := got[istioRootExpiryTS]; ts != float64(s.Source().Authority().Root().NotAfter.Unix()) {
		t.Errorf("%s = %v, want the root's NotAfter", istioRootExpiryTS, ts)
	}
	if secs := got[istioChainExpirySecs]; secs <= 0 {
		t.Errorf("%s = %v, want positive", istioChainExpirySecs, secs)
	}

	calls := []struct {
		name  string
		call  func() error
		code  codes.Code
		moved []string // series that rise by one
	}{
		{name: "issued", code: codes.OK,
			call:  func() error { _, err := s.client.CreateCertificate(ctx, "good", csrFor(t, me), 0); return err },
			moved: []string{istioCSRCount, istioSuccessCount, "castellan_ca_certificates_issued_total"}},
		{name: "bad token", code: codes.Unauthenticated,
			call:  func() error { _, err := s.client.CreateCertificate(ctx, "stranger", csrFor(t, me), 0); return err },
			moved: []string{istioCSRCount, istioAuthnFailureCount}},
		{name: "impersonation refused", code: codes.PermissionDenied,
			call: func() error {
				md := &structpb.Struct{Fields: map[string]*structpb.Value{impersonationKey: structpb.NewStringValue(me)}}
				_, err := s.client.CreateCertificateRequest(ctx, "good", &pb.IstioCertificateRequest{Csr: string(csrFor(t, "")), Metadata: md})
				return err
			},
			moved: []string{istioCSRCount, istioAuthnFailureCount}},
		{name: "garbage CSR", code: codes.InvalidArgument,
			call:  func() error { _, err := s.client.CreateCertificate(ctx, "good", []byte("garbage"), 0); return err },
			moved: []string{istioCSRCount, istioParsingErrCount, istioSignErrCount + "{error=CSR_ERROR}"}},
		{name: "other identity", code: codes.PermissionDenied,
			call: func() error {
				_, err := s.client.CreateCertificate(ctx, "good", csrFor(t, "spiffe://cluster.local/ns/kube-system/sa/admin"), 0)
				return err
			},
			moved: []string{istioCSRCount, istioIDExtractErrCount, istioSignErrCount + "{error=CSR_ERROR}"}},
	}
	for _, c := range calls {
		before := scrape(t, s)
		if err := c.call(); status.Code(err) != c.code {
			t.Fatalf("%s: %v, want %s", c.name, err, c.code)
		}
		after := scrape(t, s)
		moved := map[string]bool{}
		for _, name := range c.moved {
			moved[name] = true
			if after[name] != before[name]+1 {
				t.Errorf("%s: %s went from %v to %v, want +1", c.name, name, before[name], after[name])
			}
		}
		for name, v := range after {
			if strings.HasPrefix(name, "citadel_server_") && !strings.Contains(name, "expiry") && !moved[name] && v != before[name] {
				t.Errorf("%s: %s moved from %v to %v", c.name, name, before[name], v)
			}
		}
	}

	off := start(t)
	for _, name := range IstioMetricNames {
		if n, _ := testutil.GatherAndCount(off.reg, name); n != 0 {
			t.Errorf("%s exported without IstioMetrics", name)
		}
	}
}
