package jwtsvid_test

import (
	"context"
	"testing"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// BenchmarkMint is the CA's cost of one JWT-SVID with a file key: one
// P-256 signature and the JWS encoding.
func BenchmarkMint(b *testing.B) {
	ks, _ := newKeySetB(b)
	ctx := context.Background()
	aud := []string{"spiffe://cluster.local/ns/shop/sa/db"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ks.Mint(ctx, id, aud, jwtsvid.DefaultTTL); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidate is a verifier's cost of one JWT-SVID with go-spiffe.
func BenchmarkValidate(b *testing.B) {
	ks, _ := newKeySetB(b)
	tok, err := ks.Mint(context.Background(), id, []string{"db"}, jwtsvid.DefaultTTL)
	if err != nil {
		b.Fatal(err)
	}
	bd := bundle(ks)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := spiffejwt.ParseAndValidate(tok.Token, bd, []string{"db"}); err != nil {
			b.Fatal(err)
		}
	}
}
