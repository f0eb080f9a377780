package agent

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
)

// FuzzParseJWTAuthorities feeds the CA's answer, as it comes off the
// wire, to the parser of the JWT authorities.
func FuzzParseJWTAuthorities(f *testing.F) {
	seed, _ := proto.Marshal(&jwtapi.FetchJWTAuthoritiesResponse{TrustDomain: "cluster.local", Authorities: []*jwtapi.JWTAuthority{
		{KeyId: "k1", PublicKey: []byte{0x30, 0x59, 0x30, 0x13}},
	}})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp jwtapi.FetchJWTAuthoritiesResponse
		if proto.Unmarshal(b, &resp) != nil {
			return
		}
		bundle, err := parseJWTAuthorities(&resp)
		if err != nil {
			return
		}
		n := len(bundle.Bundle.JWTAuthorities())
		if n == 0 || n > maxJWTAuthorities || bundle.Version == "" || len(bundle.Doc) == 0 {
			t.Fatalf("accepted a bundle of %d keys, version %q", n, bundle.Version)
		}
	})
}
