package authn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
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
// effect without a restart.
type fileKeys struct {
	path       string
	minRefresh time.Duration
	cur        atomic.Pointer[jose.JSONWebKeySet]
	// checked is when the file was last looked at, in Unix nanoseconds.
	checked atomic.Int64

	mu      sync.Mutex
	modTime time.Time
	size    int64
}

func (f *fileKeys) String() string { return "file " + f.path }

func (f *fileKeys) load(context.Context, bool) (*jose.JSONWebKeySet, error) {
	set := f.cur.Load()
	if set != nil && f.recent() {
		return set, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if set = f.cur.Load(); set != nil && f.recent() {
		return set, nil
	}
	f.checked.Store(time.Now().UnixNano())
	fi, err := os.Stat(f.path)
	if err == nil && set != nil && fi.ModTime().Equal(f.modTime) && fi.Size() == f.size {
		return set, nil
	}
	var data []byte
	if err == nil {
		data, err = readLimited(f.path)
	}
	var next *jose.JSONWebKeySet
	if err == nil {
		next, err = parseKeySet(data)
	}
	if err != nil {
		if set != nil {
			// Keep the last good keys; a half-written or broken file must
			// not lock every workload out.
			return set, nil
		}
		return nil, &Error{Reason: ReasonUnavailable, Err: fmt.Errorf("JWKS file %s: %w", f.path, err)}
	}
	f.modTime, f.size = fi.ModTime(), fi.Size()
	f.cur.Store(next)
	return next, nil
}

// recent reports whether the file was checked less than minRefresh ago.
func (f *fileKeys) recent() bool {
	return time.Since(time.Unix(0, f.checked.Load())) < f.minRefresh
}

func readLimited(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxDocumentSize {
		return nil, fmt.Errorf("larger than %d bytes", maxDocumentSize)
	}
	return data, nil
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

// remoteKeys finds an issuer's keys by OpenID Connect discovery.
type remoteKeys struct {
	issuer     string
	client     *http.Client
	minRefresh time.Duration
	cur        atomic.Pointer[jose.JSONWebKeySet]
	// fetched is the time of the last successful fetch, in Unix nanoseconds.
	fetched atomic.Int64

	mu      sync.Mutex
	tried   time.Time
	jwksURI string
}

func newRemoteKeys(issuer string, client *http.Client) (*remoteKeys, error) {
	if err := checkFetchURL(issuer); err != nil {
		return nil, fmt.Errorf("authn: issuer %q: %w", issuer, err)
	}
	return &remoteKeys{issuer: issuer, client: client, minRefresh: minKeyRefresh}, nil
}

func (r *remoteKeys) String() string { return "issuer " + r.issuer }

func (r *remoteKeys) load(ctx context.Context, refresh bool) (*jose.JSONWebKeySet, error) {
	set := r.cur.Load()
	fresh := time.Since(time.Unix(0, r.fetched.Load())) < maxKeyAge
	if set != nil && fresh && !refresh {
		return set, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if set = r.cur.Load(); set != nil && time.Since(r.tried) < r.minRefresh {
		return set, nil
	}
	r.tried = time.Now()
	next, err := r.fetch(ctx)
	if err != nil {
		if set != nil {
			return set, nil
		}
		return nil, &Error{Reason: ReasonUnavailable, Err: err}
	}
	r.cur.Store(next)
	r.fetched.Store(time.Now().UnixNano())
	return next, nil
}

// fetch runs discovery (once) and fetches the key set.
func (r *remoteKeys) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	if r.jwksURI == "" {
		where := strings.TrimSuffix(r.issuer, "/") + "/.well-known/openid-configuration"
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := getJSON(ctx, r.client, where, &doc); err != nil {
			return nil, fmt.Errorf("OIDC discovery: %w", err)
		}
		switch {
		case doc.Issuer != r.issuer:
			return nil, fmt.Errorf("OIDC discovery at %s names issuer %q, want %q", where, doc.Issuer, r.issuer)
		case doc.JWKSURI == "":
			return nil, fmt.Errorf("OIDC discovery at %s has no jwks_uri", where)
		}
		if err := checkFetchURL(doc.JWKSURI); err != nil {
			return nil, fmt.Errorf("OIDC discovery at %s: jwks_uri %q: %w", where, doc.JWKSURI, err)
		}
		r.jwksURI = doc.JWKSURI
	}
	data, err := getBody(ctx, r.client, r.jwksURI)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS: %w", err)
	}
	set, err := parseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", r.jwksURI, err)
	}
	return set, nil
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
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", where, err)
	}
	if len(data) > maxDocumentSize {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", where, maxDocumentSize)
	}
	return data, nil
}
