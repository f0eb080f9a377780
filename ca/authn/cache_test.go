package authn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/castellan-mesh/castellan/internal/testclock"
)

// countingAuth is a fake Authenticator for unit tests of the cache: it
// counts calls and answers with a fixed result, optionally blocking until
// released.
type countingAuth struct {
	calls   atomic.Int32
	caller  Caller
	err     error
	release chan struct{} // when non-nil, calls wait for it to close
}

func (a *countingAuth) Authenticate(ctx context.Context, token string) (Caller, error) {
	a.calls.Add(1)
	if a.release != nil {
		select {
		case <-a.release:
		case <-ctx.Done():
			return Caller{}, &Error{Reason: ReasonUnavailable, Err: ctx.Err()}
		}
	}
	return a.caller, a.err
}

func newTestCache(t testing.TB, next Authenticator, cfg CacheConfig) (*Cache, *testclock.Clock) {
	t.Helper()
	c, err := NewCache(next, cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock := testclock.New(time.Unix(1_800_000_000, 0))
	c.epoch, c.now = clock.Now(), clock.Now
	return c, clock
}

func TestCacheReuse(t *testing.T) {
	sleep := Caller{Namespace: "default", ServiceAccount: "sleep"}
	start := time.Unix(1_800_000_000, 0)
	tests := []struct {
		name  string
		token string
		err   error
		// after is how long after the first call the second call is made.
		after time.Duration
		// calls is how many times the wrapped authenticator runs for the
		// two calls.
		calls int32
	}{
		{name: "success reused", token: fakeJWT(fmt.Sprintf(`{"exp":%d}`, start.Add(time.Hour).Unix())), after: 4 * time.Minute, calls: 1},
		{name: "success capped by max TTL", token: fakeJWT(fmt.Sprintf(`{"exp":%d}`, start.Add(time.Hour).Unix())), after: 5*time.Minute + time.Second, calls: 2},
		{name: "success capped by exp", token: fakeJWT(fmt.Sprintf(`{"exp":%d}`, start.Add(time.Minute).Unix())), after: time.Minute + time.Second, calls: 2},
		{name: "success reused until exp", token: fakeJWT(fmt.Sprintf(`{"exp":%d}`, start.Add(time.Minute).Unix())), after: 59 * time.Second, calls: 1},
		{name: "already expired not cached", token: fakeJWT(fmt.Sprintf(`{"exp":%d}`, start.Add(-time.Minute).Unix())), calls: 2},
		{name: "no exp uses cap", token: fakeJWT(`{}`), after: 4 * time.Minute, calls: 1},
		{name: "opaque token uses cap", token: "opaque", after: 4 * time.Minute, calls: 1},
		{name: "failure reused briefly", token: "bad", err: Errorf(ReasonInvalid, "no"), after: time.Second, calls: 1},
		{name: "failure expires", token: "bad", err: Errorf(ReasonInvalid, "no"), after: 2*time.Second + time.Millisecond, calls: 2},
		{name: "plain error cached as failure", token: "bad", err: errors.New("no"), after: time.Second, calls: 1},
		{name: "unavailable not cached", token: "t", err: Errorf(ReasonUnavailable, "API server down"), calls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &countingAuth{caller: sleep, err: tt.err}
			if tt.err != nil {
				next.caller = Caller{}
			}
			c, clock := newTestCache(t, next, CacheConfig{})
			for i := range 2 {
				got, err := c.Authenticate(context.Background(), tt.token)
				if !errors.Is(err, tt.err) || got != next.caller {
					t.Fatalf("call %d: Authenticate = %+v, %v; want %+v, %v", i, got, err, next.caller, tt.err)
				}
				clock.Add(tt.after)
			}
			if n := next.calls.Load(); n != tt.calls {
				t.Errorf("wrapped authenticator called %d times, want %d", n, tt.calls)
			}
		})
	}
}

func TestCacheFailureTTLDisabled(t *testing.T) {
	next := &countingAuth{err: Errorf(ReasonInvalid, "no")}
	c, _ := newTestCache(t, next, CacheConfig{FailureTTL: -1})
	for range 3 {
		c.Authenticate(context.Background(), "bad")
	}
	if n := next.calls.Load(); n != 3 {
		t.Errorf("wrapped authenticator called %d times, want 3", n)
	}
}

func TestCacheRejectsWithoutLookup(t *testing.T) {
	next := &countingAuth{}
	c, _ := newTestCache(t, next, CacheConfig{})
	tests := []struct {
		name   string
		token  string
		reason Reason
	}{
		{name: "empty", token: "", reason: ReasonNoToken},
		{name: "oversized", token: string(make([]byte, maxTokenLen+1)), reason: ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Authenticate(context.Background(), tt.token); ReasonOf(err) != tt.reason {
				t.Errorf("reason = %s, want %s", ReasonOf(err), tt.reason)
			}
		})
	}
	if n := next.calls.Load(); n != 0 {
		t.Errorf("wrapped authenticator called %d times, want 0", n)
	}
}

func TestCacheCollapsesConcurrentLookups(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}, release: make(chan struct{})}
	reg := prometheus.NewPedanticRegistry()
	c, _ := newTestCache(t, next, CacheConfig{Registerer: reg})
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			got, err := c.Authenticate(context.Background(), "tok")
			if err == nil && got != next.caller {
				err = fmt.Errorf("got %+v", got)
			}
			errs <- err
		})
	}
	// Wait until the one lookup is in flight, give the others time to
	// queue behind it, then let it finish.
	for next.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(next.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if calls := next.calls.Load(); calls != 1 {
		t.Errorf("wrapped authenticator called %d times for %d concurrent lookups, want 1", calls, n)
	}
	hits := testutil.ToFloat64(c.hits)
	shared := testutil.ToFloat64(c.shared)
	misses := testutil.ToFloat64(c.misses)
	if misses != 1 || hits+shared+misses != n {
		t.Errorf("hits=%v shared=%v misses=%v, want 1 miss and %d in all", hits, shared, misses, n)
	}
}

func TestCacheWaiterCanGiveUp(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}, release: make(chan struct{})}
	c, _ := newTestCache(t, next, CacheConfig{})
	first := make(chan error, 1)
	go func() {
		_, err := c.Authenticate(context.Background(), "tok")
		first <- err
	}()
	for next.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// A second caller whose context ends stops waiting, and the lookup it
	// shared is not cancelled for the first caller.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Authenticate(ctx, "tok"); ReasonOf(err) != ReasonUnavailable {
		t.Errorf("cancelled waiter: reason = %s, want %s", ReasonOf(err), ReasonUnavailable)
	}
	close(next.release)
	if err := <-first; err != nil {
		t.Errorf("first caller: %v", err)
	}
}

func TestCacheLookupSurvivesStarterCancel(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}, release: make(chan struct{})}
	c, _ := newTestCache(t, next, CacheConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	starter := make(chan error, 1)
	go func() {
		_, err := c.Authenticate(ctx, "tok")
		starter <- err
	}()
	for next.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waiter := make(chan error, 1)
	go func() {
		_, err := c.Authenticate(context.Background(), "tok")
		waiter <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-starter; ReasonOf(err) != ReasonUnavailable {
		t.Errorf("cancelled starter: %v", err)
	}
	close(next.release)
	if err := <-waiter; err != nil {
		t.Errorf("waiter failed with the starter's cancellation: %v", err)
	}
}

// TestCacheCancelsAbandonedLookup: when every caller waiting for a check
// has given up, the check is cancelled instead of running on (for up to
// 30s) and holding an API server request.
func TestCacheCancelsAbandonedLookup(t *testing.T) {
	cancelled := make(chan struct{})
	next := &blockingAuth{cancelled: cancelled}
	c, _ := newTestCache(t, next, CacheConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Authenticate(ctx, "tok")
			errc <- err
		}()
	}
	for next.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	for range 2 {
		if err := <-errc; ReasonOf(err) != ReasonUnavailable {
			t.Errorf("abandoned caller: %v, want %s", err, ReasonUnavailable)
		}
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the check kept running after every caller gave up")
	}
	if n := next.calls.Load(); n != 1 {
		t.Errorf("%d checks for one token, want 1", n)
	}
	// A cancelled check is not remembered as a verdict.
	if _, err := c.Authenticate(context.Background(), "tok"); err != nil {
		t.Errorf("after the abandoned check: %v", err)
	}
}

// blockingAuth blocks until its context ends, then reports that.
type blockingAuth struct {
	calls     atomic.Int32
	cancelled chan struct{}
}

func (a *blockingAuth) Authenticate(ctx context.Context, _ string) (Caller, error) {
	if a.calls.Add(1) == 1 {
		<-ctx.Done()
		close(a.cancelled)
		return Caller{}, Errorf(ReasonInvalid, "cut short")
	}
	return Caller{Namespace: "ns", ServiceAccount: "sa"}, nil
}

// TestCacheStillValid: a remembered success is re-checked with StillValid
// on every hit. Once StillValid has held for it, its failing later is a
// revocation: the token is refused at once, without asking the wrapped
// authenticator (the API server caches its own answers), and stays
// refused. A success StillValid never confirmed (the watch had not caught
// up) is checked again instead.
func TestCacheStillValid(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa", ServiceAccountUID: "u1"}}
	var valid atomic.Bool
	c, clock := newTestCache(t, next, CacheConfig{StillValid: func(Caller) bool { return valid.Load() }})

	// Not confirmed yet: every hit checks again, until the watch catches up.
	for i := range 2 {
		if _, err := c.Authenticate(context.Background(), "tok"); err != nil {
			t.Fatal(err)
		}
		if n := next.calls.Load(); n != int32(i+1) {
			t.Fatalf("%d checks after %d requests of an unconfirmed success, want %d", n, i+1, i+1)
		}
	}
	valid.Store(true)
	for range 3 {
		if _, err := c.Authenticate(context.Background(), "tok"); err != nil {
			t.Fatal(err)
		}
	}
	if n := next.calls.Load(); n != 2 {
		t.Fatalf("%d checks, want 2 (confirmed successes are served from the cache)", n)
	}

	// Revoked: refused without a check, and for as long as the success
	// would have been kept, even though the wrapped authenticator (like an
	// API server's own cache) still says yes.
	valid.Store(false)
	for range 3 {
		if _, err := c.Authenticate(context.Background(), "tok"); ReasonOf(err) != ReasonInvalid || !strings.Contains(err.Error(), "deleted") {
			t.Fatalf("after revocation: %v, want a %s error naming the deletion", err, ReasonInvalid)
		}
		clock.Add(time.Minute)
	}
	if n := next.calls.Load(); n != 2 {
		t.Errorf("%d checks, want 2 (a revocation asks nobody)", n)
	}
	if got := testutil.ToFloat64(c.revoked); got != 2 {
		t.Errorf("revoked = %v, want 2 (an unconfirmed re-check and a revocation)", got)
	}
}

func TestCacheBounded(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}}
	const limit = 1000
	c, _ := newTestCache(t, next, CacheConfig{MaxEntries: limit})
	for i := range 20 * limit {
		if _, err := c.Authenticate(context.Background(), fmt.Sprintf("token-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	perShard := (limit + numShards - 1) / numShards
	if n := c.Len(); n > perShard*numShards {
		t.Errorf("cache holds %d entries, limit %d", n, perShard*numShards)
	}
	// The most recent token is still cached.
	before := next.calls.Load()
	c.Authenticate(context.Background(), fmt.Sprintf("token-%d", 20*limit-1))
	if next.calls.Load() != before {
		t.Error("most recent token was evicted")
	}
}

func TestCacheEvictsExpiredFirst(t *testing.T) {
	next := &countingAuth{err: Errorf(ReasonInvalid, "no")}
	c, clock := newTestCache(t, next, CacheConfig{MaxEntries: numShards})
	// Fill every shard with failures, let them expire, then add a fresh
	// token: only expired entries go.
	for i := 0; c.Len() < numShards && i < 100*numShards; i++ {
		c.Authenticate(context.Background(), fmt.Sprintf("bad-%d", i))
	}
	clock.Add(time.Minute)
	next.err, next.caller = nil, Caller{Namespace: "ns", ServiceAccount: "sa"}
	c.Authenticate(context.Background(), "good")
	if n := c.Len(); n > numShards {
		t.Errorf("cache holds %d entries, limit %d", n, numShards)
	}
}

// TestCacheKeepsSuccessesUnderJunk: a full cache drops failures before
// successes, so distinct junk tokens cannot evict workloads' checks.
func TestCacheKeepsSuccessesUnderJunk(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}}
	c, _ := newTestCache(t, next, CacheConfig{MaxEntries: 8 * numShards})
	for i := range 2 * numShards {
		if _, err := c.Authenticate(context.Background(), fmt.Sprintf("good-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	next.err = Errorf(ReasonInvalid, "junk")
	for i := range 100 * numShards {
		c.Authenticate(context.Background(), fmt.Sprintf("junk-%d", i))
	}
	before := next.calls.Load()
	next.err = nil
	for i := range 2 * numShards {
		if _, err := c.Authenticate(context.Background(), fmt.Sprintf("good-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := next.calls.Load() - before; n != 0 {
		t.Errorf("%d of %d cached successes were pushed out by junk", n, 2*numShards)
	}
}

func TestCacheMetrics(t *testing.T) {
	next := &countingAuth{caller: Caller{Namespace: "ns", ServiceAccount: "sa"}}
	reg := prometheus.NewPedanticRegistry()
	c, _ := newTestCache(t, next, CacheConfig{Registerer: reg})
	for range 3 {
		c.Authenticate(context.Background(), "tok")
	}
	if got := testutil.ToFloat64(c.misses); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.hits); got != 2 {
		t.Errorf("hits = %v, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "castellan_authn_cache_total"); err != nil || n != 4 {
		t.Errorf("castellan_authn_cache_total has %d series (%v), want 4", n, err)
	}
}

// BenchmarkCacheHit measures the hit path with a token of realistic size
// (Kubernetes service-account tokens are about 1 KiB), from all cores.
func BenchmarkCacheHit(b *testing.B) {
	for _, tokens := range []int{1, 1000} {
		b.Run(fmt.Sprintf("tokens=%d", tokens), func(b *testing.B) {
			next := &countingAuth{caller: Caller{Namespace: "default", ServiceAccount: "sleep"}}
			c, err := NewCache(next, CacheConfig{Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			toks := make([]string, tokens)
			pad := make([]byte, 900)
			for i := range pad {
				pad[i] = 'x'
			}
			for i := range toks {
				toks[i] = fakeJWT(fmt.Sprintf(`{"exp":%d,"n":%d,"pad":%q}`, time.Now().Add(time.Hour).Unix(), i, pad))
				if _, err := c.Authenticate(context.Background(), toks[i]); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(len(toks[0])))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := c.Authenticate(ctx, toks[i%len(toks)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			if n := next.calls.Load(); n != int32(tokens) {
				b.Errorf("wrapped authenticator called %d times, want %d", n, tokens)
			}
		})
	}
}

// Len returns the number of cached entries, expired ones included.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
