package federation

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/ca"
)

// NewEndpointBundleForTest returns the bundle an endpoint with this data
// directory serves for a, without listening.
func NewEndpointBundleForTest(dir string, td spiffeid.TrustDomain, a *ca.Authority) (*spiffebundle.Bundle, error) {
	return NewBundleForTest(FileSequence(dir+"/"+SequenceFileName), td, a, time.Now)
}

// NewBundleForTest returns the bundle an endpoint whose sequence is in
// store serves for a at the time now returns, without listening.
func NewBundleForTest(store SequenceStore, td spiffeid.TrustDomain, a *ca.Authority, now func() time.Time) (*spiffebundle.Bundle, error) {
	seq := newSequencer(store)
	seq.now = now
	e := &Endpoint{cfg: EndpointConfig{TrustDomain: td, Source: ca.StaticSource{A: a}, RefreshHint: DefaultRefreshHint}, seq: seq}
	return e.Bundle()
}

// SetWebCertCheck sets how often the https_web files are checked, for the
// duration of a test.
func SetWebCertCheck(d time.Duration) func() {
	old := webCertCheck
	webCertCheck = d
	return func() { webCertCheck = old }
}

// Bundles returns the last good bundle of every foreign trust domain that
// has one, sorted by trust domain.
func (f *Federator) Bundles() []*spiffebundle.Bundle {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundlesLocked()
}

// SetSequenceCheck sets how often the endpoint checks a source without a
// change channel, for the duration of a test.
func SetSequenceCheck(d time.Duration) func() {
	old := sequenceCheck
	sequenceCheck = d
	return func() { sequenceCheck = old }
}
