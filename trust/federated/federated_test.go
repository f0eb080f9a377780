package federated_test

import (
	"bytes"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/castellan-mesh/castellan/trust/federated"
)

func newBundle(t testing.TB, td string) *spiffebundle.Bundle {
	t.Helper()
	id := spiffeid.RequireTrustDomainFromString(td)
	b := spiffebundle.FromX509Authorities(id, []*x509.Certificate{testpki.NewCA(t, td).Cert})
	b.SetSequenceNumber(7)
	b.SetRefreshHint(time.Minute)
	return b
}

func TestRoundTrip(t *testing.T) {
	a, b := newBundle(t, "b.test"), newBundle(t, "a.test")
	doc, err := federated.Marshal([]*spiffebundle.Bundle{a, b})
	if err != nil {
		t.Fatal(err)
	}
	got, err := federated.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].TrustDomain().Name() != "a.test" || !got[0].Equal(b) || !got[1].Equal(a) {
		t.Fatalf("round trip: got %v", got)
	}
	again, _ := federated.Marshal(got)
	if !bytes.Equal(doc, again) {
		t.Fatal("Marshal is not stable")
	}
	empty, err := federated.Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := federated.Parse(empty); err != nil || len(got) != 0 {
		t.Fatalf("empty set: %v, %v", got, err)
	}
}

func TestParseRefuses(t *testing.T) {
	good, _ := newBundle(t, "b.test").Marshal()
	tests := []struct {
		name, doc, want string
	}{
		{name: "empty", doc: "", want: "empty document"},
		{name: "not an object", doc: "[]", want: "not a JSON object"},
		{name: "bad key", doc: `{"B.TEST/x": ` + string(good) + `}`, want: "not a trust domain name"},
		{name: "key with scheme", doc: `{"spiffe://b.test": ` + string(good) + `}`, want: "bare trust domain name"},
		{name: "bundle garbage", doc: `{"b.test": {"keys": 5}}`, want: "the bundle of \"b.test\""},
		{name: "no authority", doc: `{"b.test": {"keys": []}}`, want: "no authority"},
		{name: "too large", doc: `{"b.test": "` + strings.Repeat("x", federated.MaxDocumentSize) + `"}`, want: "over the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := federated.Parse([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse: err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	doc, err := federated.Marshal([]*spiffebundle.Bundle{newBundle(f, "b.test")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(doc)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"b.test": {"keys": []}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 64<<10 {
			return // re-encoding may grow a document past the size limit
		}
		got, err := federated.Parse(in)
		if err != nil {
			return
		}
		for _, b := range got {
			if b.Empty() {
				t.Fatal("accepted an empty bundle")
			}
		}
		out, err := federated.Marshal(got)
		if err != nil {
			t.Fatalf("a parsed document does not encode: %v", err)
		}
		if _, err := federated.Parse(out); err != nil {
			t.Fatalf("an encoded document does not parse: %v", err)
		}
	})
}
