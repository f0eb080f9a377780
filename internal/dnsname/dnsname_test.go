package dnsname

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestCheckHost(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{name: "host", in: "istiod.istio-system.svc"},
		{name: "all digits", in: "10.0.0.1"},
		{name: "one label", in: "localhost"},
		{name: "empty", in: "", wantErr: "empty DNS name"},
		{name: "wildcard", in: "*.svc", wantErr: "wildcard"},
		{name: "trailing dot", in: "a.svc.", wantErr: "ends with a dot"},
		{name: "empty label", in: "a..svc", wantErr: "empty label"},
		{name: "label too long", in: strings.Repeat("a", 64) + ".svc", wantErr: "over 63"},
		{name: "name too long", in: strings.Repeat("abc.", 64) + "svc", wantErr: "over 253"},
		{name: "underscore", in: "a_b.svc", wantErr: "lowercase letters"},
		{name: "upper case", in: "A.svc", wantErr: "lowercase letters"},
		{name: "leading dash", in: "-a.svc", wantErr: "starting and ending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckHost(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckHost(%q) = %v", tt.in, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CheckHost(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

// FuzzNames holds IsLabel and IsSubdomain equal to the validation
// Kubernetes itself applies to object names, and CheckHost to
// "a label check of every label of a subdomain".
func FuzzNames(f *testing.F) {
	for _, s := range []string{"a", "castellan-system", "a.b", "a..b", "-a", "a-", "a.-b", "A", "sa.with.dots", "*.a", "a.", strings.Repeat("a", 64), strings.Repeat("a", 254)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := IsLabel(s), len(validation.IsDNS1123Label(s)) == 0; got != want {
			t.Fatalf("label %q: IsLabel = %v, Kubernetes says %v", s, got, want)
		}
		if got, want := IsSubdomain(s), len(validation.IsDNS1123Subdomain(s)) == 0; got != want {
			t.Fatalf("subdomain %q: IsSubdomain = %v, Kubernetes says %v", s, got, want)
		}
		labels := true
		for l := range strings.SplitSeq(s, ".") {
			labels = labels && IsLabel(l)
		}
		if got, want := CheckHost(s) == nil, IsSubdomain(s) && labels; got != want {
			t.Fatalf("host %q: CheckHost = %v, want accepted %v", s, CheckHost(s), want)
		}
	})
}
