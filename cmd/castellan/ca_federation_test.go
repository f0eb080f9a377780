package main

import (
	"io"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/cliflag"
)

// TestFederateWithFlag: --federate-with is repeatable, and the
// environment variable holds several relationships separated by ';'
// (a relationship has commas of its own).
func TestFederateWithFlag(t *testing.T) {
	local := spiffeid.RequireTrustDomainFromString("a.test")
	const (
		b = "b.test=https://b.example:8443,https_spiffe,spiffe://b.test/castellan/bundle-endpoint,bundle=/etc/b.json"
		c = "c.test=https://c.example/bundle,https_web"
	)
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    []string
		wantErr string
	}{
		{name: "flags", args: []string{"--federate-with", b, "--federate-with", c}, want: []string{"b.test", "c.test"}},
		{name: "environment", env: map[string]string{"CASTELLAN_FEDERATE_WITH": b + "; " + c}, want: []string{"b.test", "c.test"}},
		{name: "none", want: nil},
		{name: "local trust domain", args: []string{"--federate-with", "a.test=https://a,https_web"}, wantErr: "local trust domain"},
		{name: "bad", args: []string{"--federate-with", "b.test=https://b,https_spiffe"}, wantErr: "--federate-with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := cliflag.NewFlagSet("castellan ca", cliflag.Help{}, io.Discard, io.Discard)
			var f federationFlags
			f.register(fs)
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			if err := cliflag.Parse(fs, cliflag.EnvPrefix, tt.args, lookup); err != nil {
				t.Fatal(err)
			}
			rels, err := f.relationships(local)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rels {
				got = append(got, r.TrustDomain.Name())
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}
