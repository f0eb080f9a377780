package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/federation"
	"github.com/castellan-mesh/castellan/ca/federation/secretsequence"
	"github.com/castellan-mesh/castellan/trust/federated"
)

// federationFlags are the SPIFFE federation flags of "castellan ca": the
// bundle endpoint of the local trust domain and the foreign trust domains
// polled.
type federationFlags struct {
	endpointAddr, endpointProfile, endpointID string
	endpointCert, endpointKey                 string
	refreshHint                               time.Duration
	federateWith                              []string
	minRefresh, maxRefresh                    time.Duration
}

func (f *federationFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.endpointAddr, "bundle-endpoint-addr", "", "listen address of the SPIFFE bundle endpoint (TLS; empty: not served), e.g. :8443")
	fs.StringVar(&f.endpointProfile, "bundle-endpoint-profile", string(federation.ProfileSPIFFE), "how the bundle endpoint authenticates itself: https_spiffe (an SVID the CA issues itself) or https_web (--bundle-endpoint-cert and --bundle-endpoint-key)")
	fs.StringVar(&f.endpointID, "bundle-endpoint-spiffe-id", "", "SPIFFE ID of the https_spiffe bundle endpoint (default: spiffe://<trust domain>"+federation.DefaultEndpointPath+")")
	fs.StringVar(&f.endpointCert, "bundle-endpoint-cert", "", "PEM certificate chain of the https_web bundle endpoint (re-read when it changes)")
	fs.StringVar(&f.endpointKey, "bundle-endpoint-key", "", "PEM private key of the https_web bundle endpoint (re-read when it changes)")
	fs.DurationVar(&f.refreshHint, "bundle-endpoint-refresh-hint", federation.DefaultRefreshHint, "spiffe_refresh_hint of the served bundle: how often federated peers should fetch it")
	fs.Func("federate-with", "a foreign trust domain to federate with (repeatable; entries separated by ';' in CASTELLAN_FEDERATE_WITH): TD=URL,https_spiffe,ENDPOINT_SPIFFE_ID,bundle=FILE or TD=URL,https_web[,roots=FILE]", func(v string) error {
		f.federateWith = append(f.federateWith, v)
		return nil
	})
	fs.DurationVar(&f.minRefresh, "federation-min-refresh", federation.DefaultMinRefresh, "shortest interval between two fetches of a foreign bundle, whatever its refresh hint")
	fs.DurationVar(&f.maxRefresh, "federation-max-refresh", federation.DefaultMaxRefresh, "longest interval between two fetches of a foreign bundle, whatever its refresh hint")
}

// relationships parses --federate-with.
func (f *federationFlags) relationships(local spiffeid.TrustDomain) ([]federation.Relationship, error) {
	var rels []federation.Relationship
	var specs []string
	for _, v := range f.federateWith {
		for _, spec := range strings.Split(v, ";") {
			if spec = strings.TrimSpace(spec); spec != "" {
				specs = append(specs, spec)
			}
		}
	}
	for _, spec := range specs {
		r, err := federation.ParseRelationship(spec)
		if err != nil {
			return nil, usageError{Err: fmt.Errorf("--federate-with: %w", err)}
		}
		if r.TrustDomain == local {
			return nil, usageError{Err: fmt.Errorf("--federate-with: %s is the local trust domain", local.Name())}
		}
		rels = append(rels, r)
	}
	return rels, nil
}

// prepare creates the federator when --federate-with is given, and
// records it in d, before the CA material source (whose trust ConfigMap
// publishes the federated bundles) is made.
func (f *federationFlags) prepare(d *caDeps) error {
	rels, err := f.relationships(d.trustDomain)
	if err != nil || len(rels) == 0 {
		return err
	}
	fed, err := federation.New(federation.Config{
		TrustDomain: d.trustDomain, Relationships: rels, DataDir: d.dataDir,
		MinRefresh: f.minRefresh, MaxRefresh: f.maxRefresh,
		Logger: d.log.With("component", "federation"), Registerer: d.reg,
	})
	if err != nil {
		return usageError{Err: err}
	}
	d.federated = fed
	return nil
}

// start creates the bundle endpoint that the flags ask for, and returns
// its job and the federator's. src is the CA's material; jwt, if not nil,
// supplies the JWT authorities. With --material=kubernetes the endpoint's
// sequence numbers are kept in the CA Secret, shared by the replicas (see
// package secretsequence); else in the data directory.
func (f *federationFlags) start(d *caDeps, kube *kubeFlags, src ca.Source, jwt federation.JWTAuthoritySource) ([]func(context.Context) error, error) {
	var jobs []func(context.Context) error
	if d.federated != nil {
		jobs = append(jobs, d.federated.Run)
	}
	if f.endpointAddr != "" {
		cfg := federation.EndpointConfig{
			Addr: f.endpointAddr, TrustDomain: d.trustDomain, Source: src, JWT: jwt,
			RefreshHint: f.refreshHint, Profile: federation.Profile(f.endpointProfile),
			CertFile: f.endpointCert, KeyFile: f.endpointKey, DataDir: d.dataDir,
			Logger: d.log.With("component", "bundle-endpoint"), Registerer: d.reg,
		}
		if f.endpointID != "" {
			id, err := spiffeid.FromString(f.endpointID)
			if err != nil {
				return nil, usageError{Err: fmt.Errorf("--bundle-endpoint-spiffe-id %q: %w", f.endpointID, err)}
			}
			cfg.ID = id
		}
		if kube != nil && kube.material == materialKubernetes {
			client, err := d.kubeClient()
			if err != nil {
				return nil, fmt.Errorf("--material=kubernetes needs a cluster (set --kubeconfig or run in a pod): %w", err)
			}
			cfg.Sequence = &secretsequence.Store{Client: client, Namespace: kube.namespace, Name: kube.secretName}
		}
		e, err := federation.NewEndpoint(cfg)
		if err != nil {
			return nil, usageError{Err: err}
		}
		jobs = append(jobs, e.Serve)
	}
	return jobs, nil
}

// federatedConfigMapData returns the extra keys of the trust ConfigMap:
// federated-bundles.json, once the federator has a document; nil without
// federation.
func federatedConfigMapData(d *caDeps) func() map[string]string {
	fed := d.federated
	if fed == nil {
		return nil
	}
	return func() map[string]string {
		doc, _ := fed.Document()
		if doc == nil {
			return nil
		}
		return map[string]string{federated.FileName: string(doc)}
	}
}

// follow calls f after each change that changed signals (it returns a
// channel closed at the next change), from now until ctx ends.
func follow(ctx context.Context, changed func() <-chan struct{}, f func()) error {
	ch := changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
			ch = changed()
			f()
		}
	}
}

// serveWith runs serve and jobs until ctx ends or one of them fails.
func serveWith(ctx context.Context, serve func(context.Context) error, jobs ...func(context.Context) error) error {
	if len(jobs) == 0 {
		return serve(ctx)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serve(ctx) })
	for _, job := range jobs {
		g.Go(func() error { return job(ctx) })
	}
	return g.Wait()
}
