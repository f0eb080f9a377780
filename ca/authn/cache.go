package authn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Defaults for CacheConfig.
const (
	defaultCacheMaxTTL     = 5 * time.Minute
	defaultCacheFailureTTL = 2 * time.Second
	defaultCacheMaxEntries = 1 << 16
	// lookupTimeout bounds a collapsed lookup, which runs detached from the
	// context of the caller that started it.
	lookupTimeout = 30 * time.Second
	// numShards spreads the cache over independently locked maps so that
	// concurrent hits rarely touch the same lock.
	numShards = 64
)

// CacheConfig configures a Cache.
type CacheConfig struct {
	// MaxTTL caps how long a successful result is reused. A success is
	// never kept past the token's own exp claim. Zero means 5m.
	MaxTTL time.Duration
	// FailureTTL is how long a rejection is reused, so that a caller
	// retrying a bad token does not cost a review each time. Failures
	// with ReasonUnavailable are never cached. Zero means 2s; a negative
	// value disables caching of failures.
	FailureTTL time.Duration
	// MaxEntries bounds the number of cached tokens. When full, expired
	// entries are dropped first, then arbitrary ones. Zero means 65536.
	MaxEntries int
	// StillValid, if set, is asked on every cache hit whether a
	// remembered success still holds (for example
	// ServiceAccountTokens.StillValid, which consults watch caches). A
	// success it refuses is dropped and the token is checked again, so a
	// deleted service account or pod stops being accepted without waiting
	// for MaxTTL.
	StillValid func(Caller) bool
	// Registerer receives the castellan_authn_cache_total counter. Nil
	// means the counter is not exported.
	Registerer prometheus.Registerer
}

// Cache wraps an Authenticator and reuses its results, keyed by the
// SHA-256 hash of the token; the token itself is never stored. Concurrent
// lookups of the same token are collapsed into one call of the wrapped
// Authenticator. Cache is safe for concurrent use.
type Cache struct {
	next       Authenticator
	maxTTL     time.Duration
	failureTTL time.Duration
	perShard   int
	shards     [numShards]cacheShard
	stillValid func(Caller) bool

	flightMu sync.Mutex
	flights  map[[sha256.Size]byte]*flight

	// epoch anchors expiry times on the monotonic clock; now is replaced
	// in tests.
	epoch time.Time
	now   func() time.Time

	hits, misses, shared, revoked prometheus.Counter
}

// flight is one lookup of the wrapped Authenticator, shared by every
// caller that asks for the same token while it runs. It is cancelled when
// the last of them stops waiting.
type flight struct {
	done    chan struct{} // closed once caller and err are set
	caller  Caller
	err     error
	waiters int // guarded by Cache.flightMu
	cancel  context.CancelFunc
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]cacheEntry
	// Keep shards on separate cache lines.
	_ [32]byte
}

type cacheEntry struct {
	caller Caller
	err    error
	// expires is in nanoseconds since Cache.epoch.
	expires int64
	// confirmed records that StillValid held for this success at some
	// point: the objects it names were seen, so their absence later is a
	// deletion, not a watch that has not caught up yet.
	confirmed bool
}

// NewCache returns a Cache in front of next.
func NewCache(next Authenticator, cfg CacheConfig) (*Cache, error) {
	if next == nil {
		return nil, errors.New("authn: cache needs an authenticator to wrap")
	}
	c := &Cache{
		next:       next,
		maxTTL:     cfg.MaxTTL,
		failureTTL: cfg.FailureTTL,
		stillValid: cfg.StillValid,
		flights:    make(map[[sha256.Size]byte]*flight),
		epoch:      time.Now(),
		now:        time.Now,
	}
	if c.maxTTL <= 0 {
		c.maxTTL = defaultCacheMaxTTL
	}
	if c.failureTTL == 0 {
		c.failureTTL = defaultCacheFailureTTL
	}
	maxEntries := cfg.MaxEntries
	if maxEntries <= 0 {
		maxEntries = defaultCacheMaxEntries
	}
	c.perShard = max(1, (maxEntries+numShards-1)/numShards)
	for i := range c.shards {
		c.shards[i].m = make(map[[sha256.Size]byte]cacheEntry)
	}
	f := promreg.WithShared(cfg.Registerer)
	lookups := f.CounterVec("castellan_authn_cache_total",
		"Authentication cache lookups, by result: hit (answered from the cache), miss (the token was checked), shared (waited on a check already in flight), revoked (a remembered success no longer held and was checked again).",
		"result")
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	c.hits = lookups.WithLabelValues("hit")
	c.misses = lookups.WithLabelValues("miss")
	c.shared = lookups.WithLabelValues("shared")
	c.revoked = lookups.WithLabelValues("revoked")
	return c, nil
}

// Authenticate returns the cached result for token, or asks the wrapped
// Authenticator once and caches its answer.
func (c *Cache) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, errNoToken
	}
	if len(token) > maxTokenLen {
		return Caller{}, Errorf(ReasonMalformed, "token is %d bytes, over the limit of %d", len(token), maxTokenLen)
	}
	key := hashToken(token)
	shard := &c.shards[key[0]%numShards]
	shard.mu.RLock()
	e, ok := shard.m[key]
	shard.mu.RUnlock()
	if ok && c.since() < e.expires {
		switch {
		case e.err != nil || c.stillValid == nil:
		case c.stillValid(e.caller):
			if !e.confirmed {
				e.confirmed = true
				c.put(key, e)
			}
		case e.confirmed:
			// The service account or pod was seen and is gone now: the
			// token is revoked. Asking the API server would not help: it
			// caches its own answers for a while.
			// A revocation is final (UIDs are never reused), so it is
			// remembered as long as the success would have been.
			c.revoked.Inc()
			err := Errorf(ReasonInvalid, "service account %s/%s or the pod its token is bound to was deleted", e.caller.Namespace, e.caller.ServiceAccount)
			c.put(key, cacheEntry{err: err, expires: e.expires})
			return Caller{}, err
		default:
			// Accepted before the watch caught up: check again.
			c.revoked.Inc()
			c.forget(key, e)
			return c.lookup(ctx, key, token)
		}
		c.hits.Inc()
		return e.caller, e.err
	}
	return c.lookup(ctx, key, token)
}

// forget drops the entry for key if it is still e.
func (c *Cache) forget(key [sha256.Size]byte, e cacheEntry) {
	shard := &c.shards[key[0]%numShards]
	shard.mu.Lock()
	if cur, ok := shard.m[key]; ok && cur.expires == e.expires {
		delete(shard.m, key)
	}
	shard.mu.Unlock()
}

// lookup calls the wrapped Authenticator, collapsing concurrent calls for
// the same key, and stores the result. The shared call does not die with
// the context of whichever caller started it: it runs detached, with its
// own timeout, and is cancelled only when every caller waiting for it has
// given up, so an abandoned check does not keep holding a TokenReview.
func (c *Cache) lookup(ctx context.Context, key [sha256.Size]byte, token string) (Caller, error) {
	c.flightMu.Lock()
	f, shared := c.flights[key]
	if shared {
		f.waiters++
	} else {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		f = &flight{done: make(chan struct{}), waiters: 1, cancel: cancel}
		c.flights[key] = f
		go c.run(lctx, key, token, f)
	}
	c.flightMu.Unlock()
	if shared {
		c.shared.Inc()
	} else {
		c.misses.Inc()
	}
	select {
	case <-f.done:
		return f.caller, f.err
	case <-ctx.Done():
		c.flightMu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if c.flights[key] == f {
				delete(c.flights, key)
			}
		}
		c.flightMu.Unlock()
		return Caller{}, &Error{Reason: ReasonUnavailable, Err: fmt.Errorf("gave up waiting for the token check: %w", ctx.Err())}
	}
}

// run performs the lookup f and publishes its result.
func (c *Cache) run(ctx context.Context, key [sha256.Size]byte, token string, f *flight) {
	defer f.cancel()
	caller, err := c.next.Authenticate(ctx, token)
	if err != nil && ctx.Err() != nil && ReasonOf(err) != ReasonUnavailable {
		// A check cut short is no verdict on the token.
		err = &Error{Reason: ReasonUnavailable, Err: err}
	}
	c.store(key, token, caller, err)
	f.caller, f.err = caller, err
	c.flightMu.Lock()
	if c.flights[key] == f {
		delete(c.flights, key)
	}
	c.flightMu.Unlock()
	close(f.done)
}

// store caches the outcome of one lookup for as long as it may be reused.
func (c *Cache) store(key [sha256.Size]byte, token string, caller Caller, err error) {
	var ttl time.Duration
	switch {
	case err == nil:
		ttl = c.maxTTL
		if u, perr := peek(token); perr == nil && !u.Expiry.IsZero() {
			ttl = min(ttl, u.Expiry.Sub(c.now()))
		}
	case ReasonOf(err) == ReasonUnavailable:
		return
	default:
		ttl = c.failureTTL
	}
	if ttl <= 0 {
		return
	}
	e := cacheEntry{caller: caller, err: err, expires: c.since() + int64(ttl)}
	if err == nil && c.stillValid != nil {
		e.confirmed = c.stillValid(caller)
	}
	c.put(key, e)
}

// put stores e under key, making room if the shard is full.
func (c *Cache) put(key [sha256.Size]byte, e cacheEntry) {
	shard := &c.shards[key[0]%numShards]
	shard.mu.Lock()
	if _, ok := shard.m[key]; !ok && len(shard.m) >= c.perShard {
		shard.evict(c.since(), c.perShard)
	}
	shard.m[key] = e
	shard.mu.Unlock()
}

// evict makes room in a full shard: it drops expired entries, then
// failures, and if that is not enough, arbitrary ones, down to 7/8 of the
// limit, so that the cost is amortized over many inserts. Failures go
// before successes so that a flood of distinct junk tokens does not push
// out the workloads' cached checks. The caller holds the write lock.
func (s *cacheShard) evict(now int64, limit int) {
	target := limit - max(1, limit/8)
	for k, e := range s.m {
		if e.expires <= now {
			delete(s.m, k)
		}
	}
	for k, e := range s.m {
		if len(s.m) <= target {
			return
		}
		if e.err != nil {
			delete(s.m, k)
		}
	}
	for k := range s.m {
		if len(s.m) <= target {
			break
		}
		delete(s.m, k)
	}
}

// hashToken returns the SHA-256 hash of token without copying it: the
// hash only reads its input, and a copy of a 1 KiB token per lookup would
// be most of the hit path's garbage.
func hashToken(token string) [sha256.Size]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
}

// since returns the current time in nanoseconds since c.epoch.
func (c *Cache) since() int64 {
	return int64(c.now().Sub(c.epoch))
}
