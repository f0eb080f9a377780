package source

import (
	"context"
	"fmt"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadAPI fetches the X.509 context from the SPIFFE Workload API at addr
// ("unix:///path/to/socket") with go-spiffe's client, as a workload does. It
// returns the default (first) X509-SVID, with its trust domain's bundle and
// the public half of its private key. go-spiffe rejects a non-conformant
// SVID; that rejection is returned as the error.
func WorkloadAPI(ctx context.Context, addr string) (inspect.Input, error) {
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return inspect.Input{}, fmt.Errorf("source: Workload API address %q: %w", addr, err)
	}
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: fetching X.509 context from the Workload API at %s: %w", addr, err)
	}
	svid := x509ctx.DefaultSVID()
	if svid == nil || len(svid.Certificates) == 0 {
		return inspect.Input{}, fmt.Errorf("source: the Workload API at %s returned no X509-SVID", addr)
	}
	in := inspect.Input{
		Source:    "workload-api:" + addr,
		Chain:     svid.Certificates,
		KeySource: "workload-api:" + addr,
	}
	if svid.PrivateKey != nil {
		in.PublicKey = svid.PrivateKey.Public()
	}
	if n := len(x509ctx.SVIDs); n > 1 {
		in.Notes = append(in.Notes, fmt.Sprintf("the Workload API returned %d X509-SVIDs; this is the first (default) one", n))
	}
	td := svid.ID.TrustDomain()
	if x509ctx.Bundles != nil {
		if b, ok := x509ctx.Bundles.Get(td); ok {
			in.Bundle = b.X509Authorities()
			in.BundleSource = "workload-api:" + addr + " bundle for " + td.Name()
		}
		if n := x509ctx.Bundles.Len(); n > 1 {
			in.Notes = append(in.Notes, fmt.Sprintf("the Workload API returned bundles for %d trust domains (federation)", n))
		}
	}
	if svid.Hint != "" {
		in.Notes = append(in.Notes, "SVID hint "+svid.Hint)
	}
	return in, nil
}
