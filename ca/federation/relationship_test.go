package federation_test

import (
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/federation"
)

func TestParseRelationship(t *testing.T) {
	tests := []struct {
		name, spec string
		want       string // String() of the result, or "" for an error
		wantErr    string
	}{
		{name: "https_spiffe", spec: "b.test=https://b.example:8443,https_spiffe,spiffe://b.test/castellan/bundle-endpoint,bundle=/etc/b.json",
			want: "b.test=https://b.example:8443,https_spiffe,spiffe://b.test/castellan/bundle-endpoint,bundle=/etc/b.json"},
		{name: "https_spiffe options in any order", spec: "b.test=https://b.example,https_spiffe,bundle=/b.json,spiffe://b.test/e",
			want: "b.test=https://b.example,https_spiffe,spiffe://b.test/e,bundle=/b.json"},
		{name: "https_web", spec: "b.test=https://b.example/bundle,https_web", want: "b.test=https://b.example/bundle,https_web"},
		{name: "https_web with roots", spec: "b.test=https://b.example/,https_web,roots=/r.pem", want: "b.test=https://b.example/,https_web,roots=/r.pem"},
		{name: "no equals", spec: "b.test", wantErr: "no trust domain"},
		{name: "empty trust domain", spec: "=https://b,https_web", wantErr: "no trust domain"},
		{name: "upper case trust domain", spec: "B.test=https://b,https_web", wantErr: "not a bare trust domain"},
		{name: "trust domain with scheme", spec: "spiffe://b.test=https://b,https_web", wantErr: "not a bare trust domain"},
		{name: "no profile", spec: "b.test=https://b", wantErr: "want URL,PROFILE"},
		{name: "http", spec: "b.test=http://b,https_web", wantErr: "is https"},
		{name: "no host", spec: "b.test=https:///x,https_web", wantErr: "no host"},
		{name: "user info", spec: "b.test=https://u:p@b,https_web", wantErr: "user information"},
		{name: "fragment", spec: "b.test=https://b/#x,https_web", wantErr: "fragment"},
		{name: "bad profile", spec: "b.test=https://b,https", wantErr: "neither"},
		{name: "spiffe without id", spec: "b.test=https://b,https_spiffe,bundle=/b.json", wantErr: "needs the endpoint's SPIFFE ID"},
		{name: "spiffe without bundle", spec: "b.test=https://b,https_spiffe,spiffe://b.test/e", wantErr: "no trust on first use"},
		{name: "id of another domain", spec: "b.test=https://b,https_spiffe,spiffe://c.test/e,bundle=/b", wantErr: "not in trust domain b.test"},
		{name: "two ids", spec: "b.test=https://b,https_spiffe,spiffe://b.test/e,spiffe://b.test/f,bundle=/b", wantErr: "two endpoint"},
		{name: "bad id", spec: "b.test=https://b,https_spiffe,spiffe://b.test/E/../x,bundle=/b", wantErr: "endpoint SPIFFE ID"},
		{name: "two bundles", spec: "b.test=https://b,https_spiffe,spiffe://b.test/e,bundle=/b,bundle=/c", wantErr: "one file"},
		{name: "empty bundle", spec: "b.test=https://b,https_spiffe,spiffe://b.test/e,bundle=", wantErr: "one file"},
		{name: "web with id", spec: "b.test=https://b,https_web,spiffe://b.test/e", wantErr: "https_spiffe only"},
		{name: "web with bundle", spec: "b.test=https://b,https_web,bundle=/b", wantErr: "https_spiffe only"},
		{name: "spiffe with roots", spec: "b.test=https://b,https_spiffe,spiffe://b.test/e,bundle=/b,roots=/r", wantErr: "https_web only"},
		{name: "unknown field", spec: "b.test=https://b,https_web,refresh=1s", wantErr: "unknown field"},
		{name: "empty field", spec: "b.test=https://b,https_web,", wantErr: "unknown field"},
		{name: "too long", spec: "b.test=https://b/" + strings.Repeat("x", federation.MaxSpecLen), wantErr: "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := federation.ParseRelationship(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to say %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.String(); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzParseRelationship: the parser never panics, and what it accepts
// prints back to a specification that parses to the same relationship.
func FuzzParseRelationship(f *testing.F) {
	f.Add("b.test=https://b.example:8443,https_spiffe,spiffe://b.test/castellan/bundle-endpoint,bundle=/etc/b.json")
	f.Add("b.test=https://b.example/bundle,https_web,roots=/r.pem")
	f.Add("b.test=https://b,https_web,")
	f.Add("=,,,")
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := federation.ParseRelationship(spec)
		if err != nil {
			return
		}
		if r.TrustDomain.IsZero() || r.URL == "" || (r.Profile == federation.ProfileSPIFFE && (r.EndpointID.IsZero() || r.BundleFile == "")) {
			t.Fatalf("accepted an incomplete relationship %+v from %q", r, spec)
		}
		again, err := federation.ParseRelationship(r.String())
		if err != nil {
			t.Fatalf("String() of %q does not parse: %v", spec, err)
		}
		if again != r {
			t.Fatalf("round trip of %q: %+v, then %+v", spec, r, again)
		}
	})
}
