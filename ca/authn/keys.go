package authn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-mesh/castellan/internal/filewatch"
)

const (
	// minKeyRefresh rate-limits reloading a key set because a token named
	// an unknown key, so that hostile tokens cannot drive load.
	minKeyRefresh = 10 * time.Second
	// maxKeyAge is how long keys fetched from an issuer are used before
	// they are fetched again.
	maxKeyAge = time.Hour
	// maxDocumentSize bounds a key set or discovery document.
	maxDocumentSize = 1 << 20
	// defaultFetchTimeout bounds one fetch of a discovery document and key
	// set.
	defaultFetchTimeout = 10 * time.Second
)

// keySource provides an issuer's public keys.
type keySource interface {
	// load returns the current key set. With refresh, the source is read
	// again unless it was read very recently. Once a set has been loaded,
	// a failure to refresh keeps the previous set.
	load(ctx context.Context, refresh bool) (*jose.JSONWebKeySet, error)
	String() string
}

// fileKeys reads a key set from a JWKS file. The file is checked for
// changes at most every minRefresh, whether or not a token names an
// unknown key, so that both an added key and a removed (revoked) one take
// effect without a restart. A file that goes away or stops parsing keeps
// the last good keys: a half-written file must not lock every workload out.
type fileKeys struct {
	path       string
	minRefresh time.Duration
	watch      *filewatch.Watcher
	cur        atomic.Pointer[jose.JSONWebKeySet]
	// checked is when the file was last looked at, in Unix nanoseconds.
	checked atomic.Int64

	mu      sync.Mutex // serialises checks of the file
	lastErr error      // why the file did not load, reported by watch
}

func newFileKeys(path string) (*fileKeys, error) {
	f := &fileKeys{path: path, minRefresh: minKeyRefresh}
	w, err := filewatch.New(filewatch.Config{
		Path: path, MaxSize: maxDocumentSize, Interval: minKeyRefresh,
		Load: func(data []byte) error {
			set, err := parseKeySet(data)
			if err == nil {
				f.cur.Store(set)
			}
			return err
		},
		Report: func(err error) { f.lastErr = err },
	})
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	f.watch = w
	return f, nil
}

func (f *fileKeys) String() string { return "file " + f.path }

func (f *fileKeys) load(context.Context, bool) (*jose.JSONWebKeySet, error) {
	if set := f.cur.Load(); set != nil && f.recent() {
		return set, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.recent() {
		f.checked.Store(time.Now().UnixNano())
		f.watch.Check()
	}
	if set := f.cur.Load(); set != nil {
		return set, nil
	}
	return nil, &Error{Reason: ReasonUnavailable, Err: fmt.Errorf("JWKS file %s: %w", f.path, f.lastErr)}
}

// recent reports whether the file was checked less than minRefresh ago.
func (f *fileKeys) recent() bool {
	return time.Since(time.Unix(0, f.checked.Load())) < f.minRefresh
}

// parseKeySet parses a JWKS document. Keys of unsupported types are
// skipped, but at least one usable public signing key must remain.
func parseKeySet(data []byte) (*jose.JSONWebKeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	set := &jose.JSONWebKeySet{}
	var skipped []string
	for i, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		if !isAsymmetric(k.Key) {
			skipped = append(skipped, fmt.Sprintf("key %d (%q): not an asymmetric key", i, k.KeyID))
			continue
		}
		set.Keys = append(set.Keys, k.Public())
	}
	if len(set.Keys) == 0 {
		if len(skipped) > 0 {
			return nil, fmt.Errorf("no usable signing key (%s)", strings.Join(skipped, "; "))
		}
		return nil, fmt.Errorf("no keys")
	}
	return set, nil
}

// keyFetcher reads a key set from where an issuer publishes it.
type keyFetcher interface {
	// fetch returns the issuer's keys and the issuer they belong to (as
	// its discovery document names it).
	fetch(ctx context.Context) (issuer string, set *jose.JSONWebKeySet, err error)
	String() string
}

// keySnapshot is one successfully fetched key set.
type keySnapshot struct {
	issuer  string
	set     *jose.JSONWebKeySet
	fetched time.Time
}

// remoteKeys serves an issuer's keys from memory and refreshes them in the
// background, so that a slow or hung issuer never holds up a token that a
// cached key can verify:
//   - a load with cached keys never waits for the network;
//   - keys older than maxAge are fetched again in the background;
//   - an unknown key id (refresh) starts at most one fetch per minRefresh,
//     and only that token waits for it, bounded by its context and by
//     fetchTimeout;
//   - until the first fetch succeeds, loads wait for a fetch (at most one
//     in flight) and fail as unavailable.
//
// A failed fetch keeps the last good keys.
type remoteKeys struct {
	fetcher      keyFetcher
	minRefresh   time.Duration
	maxAge       time.Duration
	fetchTimeout time.Duration
	cur          atomic.Pointer[keySnapshot]

	mu       sync.Mutex
	tried    time.Time     // start of the last fetch
	inflight chan struct{} // closed when the running fetch ends; nil when none
	lastErr  error         // error of the last fetch, nil after a success
}

// newRemoteKeys returns keys found by OpenID Connect discovery at issuer.
func newRemoteKeys(issuer string, client *http.Client) (*remoteKeys, error) {
	if err := checkFetchURL(issuer); err != nil {
		return nil, fmt.Errorf("authn: issuer %q: %w", issuer, err)
	}
	return newRefreshingKeys(&oidcFetcher{issuer: issuer, client: client}, maxKeyAge), nil
}

func newRefreshingKeys(f keyFetcher, maxAge time.Duration) *remoteKeys {
	return &remoteKeys{fetcher: f, minRefresh: minKeyRefresh, maxAge: maxAge, fetchTimeout: defaultFetchTimeout}
}

func (r *remoteKeys) String() string { return r.fetcher.String() }

// issuer returns the issuer named by the last fetched discovery document,
// or "" before the first successful fetch.
func (r *remoteKeys) issuer() string {
	if s := r.cur.Load(); s != nil {
		return s.issuer
	}
	return ""
}

func (r *remoteKeys) load(ctx context.Context, refresh bool) (*jose.JSONWebKeySet, error) {
	s := r.cur.Load()
	if s != nil && !refresh && time.Since(s.fetched) < r.maxAge {
		return s.set, nil
	}
	interval := r.minRefresh
	if s == nil {
		// Without keys nothing can be verified: retry sooner, but still
		// not once per token.
		interval = min(interval, time.Second)
	}
	r.mu.Lock()
	done := r.inflight
	if done == nil && time.Since(r.tried) >= interval {
		done = r.startFetch()
	}
	r.mu.Unlock()
	if s != nil && (!refresh || done == nil) {
		// Stale keys are still the best there is; the refresh runs in the
		// background. An unknown key id inside the refresh window is
		// answered with the keys at hand.
		return s.set, nil
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	if s = r.cur.Load(); s != nil {
		return s.set, nil
	}
	r.mu.Lock()
	err := r.lastErr
	r.mu.Unlock()
	if err == nil {
		err = fmt.Errorf("keys of %s not loaded yet: %w", r.fetcher, context.Cause(ctx))
	}
	return nil, &Error{Reason: ReasonUnavailable, Err: err}
}

// startFetch starts a background fetch and returns a channel closed when it
// ends. The caller holds r.mu.
func (r *remoteKeys) startFetch() chan struct{} {
	done := make(chan struct{})
	r.inflight = done
	r.tried = time.Now()
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), r.fetchTimeout)
		defer cancel()
		iss, set, err := r.fetcher.fetch(ctx)
		if err == nil {
			r.cur.Store(&keySnapshot{issuer: iss, set: set, fetched: time.Now()})
		}
		r.mu.Lock()
		r.inflight, r.lastErr = nil, err
		r.mu.Unlock()
	}()
	return done
}

// oidcFetcher finds an issuer's keys by OpenID Connect discovery over
// HTTPS: issuer + "/.well-known/openid-configuration", then its jwks_uri.
type oidcFetcher struct {
	issuer string
	client *http.Client

	mu      sync.Mutex
	jwksURI string
}

func (o *oidcFetcher) String() string { return "issuer " + o.issuer }

func (o *oidcFetcher) fetch(ctx context.Context) (string, *jose.JSONWebKeySet, error) {
	o.mu.Lock()
	jwksURI := o.jwksURI
	o.mu.Unlock()
	if jwksURI == "" {
		where := strings.TrimSuffix(o.issuer, "/") + "/.well-known/openid-configuration"
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := getJSON(ctx, o.client, where, &doc); err != nil {
			return "", nil, fmt.Errorf("OIDC discovery: %w", err)
		}
		switch {
		case doc.Issuer != o.issuer:
			return "", nil, fmt.Errorf("OIDC discovery at %s names issuer %q, want %q", where, doc.Issuer, o.issuer)
		case doc.JWKSURI == "":
			return "", nil, fmt.Errorf("OIDC discovery at %s has no jwks_uri", where)
		}
		if err := checkFetchURL(doc.JWKSURI); err != nil {
			return "", nil, fmt.Errorf("OIDC discovery at %s: jwks_uri %q: %w", where, doc.JWKSURI, err)
		}
		jwksURI = doc.JWKSURI
		o.mu.Lock()
		o.jwksURI = jwksURI
		o.mu.Unlock()
	}
	data, err := getBody(ctx, o.client, jwksURI)
	if err != nil {
		return "", nil, fmt.Errorf("fetching JWKS: %w", err)
	}
	set, err := parseKeySet(data)
	if err != nil {
		return "", nil, fmt.Errorf("JWKS at %s: %w", jwksURI, err)
	}
	return o.issuer, set, nil
}

// checkFetchURL accepts https URLs, and http only to a loopback host.
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("no host")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("plain http is only allowed to a loopback host")
	}
	return fmt.Errorf("scheme %q is not https", u.Scheme)
}

func getJSON(ctx context.Context, client *http.Client, where string, v any) error {
	data, err := getBody(ctx, client, where)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

func getBody(ctx context.Context, client *http.Client, where string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, where, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", where, resp.Status)
	}
	data, err := readDocument(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", where, err)
	}
	return data, nil
}

// readDocument reads a discovery document or key set, refusing more than
// maxDocumentSize bytes.
func readDocument(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDocumentSize+1))
	if err == nil && len(data) > maxDocumentSize {
		err = fmt.Errorf("larger than %d bytes", maxDocumentSize)
	}
	return data, err
}
