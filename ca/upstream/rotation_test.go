package upstream

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testclock"
	"github.com/castellan-mesh/castellan/internal/testpoll"
)

// fakeMount is an upstream with several issuers, like a Vault PKI mount,
// for unit tests of the rotation logic. integration/rotation runs the same
// rotation against Vault.
type fakeMount struct {
	t       *testing.T
	mu      sync.Mutex
	issuers map[string]*fakeUpstream
	def     string
}

func newFakeMount(t *testing.T) *fakeMount {
	return &fakeMount{t: t, issuers: map[string]*fakeUpstream{"id-1": newFakeUpstream(t)}, def: "id-1"}
}

func (m *fakeMount) String() string { return "fake mount" }

func (m *fakeMount) issuer(ref string) *fakeUpstream {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.issuers[ref]
}

func (m *fakeMount) SignIntermediate(ctx context.Context, csr []byte, ttl time.Duration) (*x509.Certificate, []*x509.Certificate, error) {
	return m.issuer(m.def).SignIntermediate(ctx, csr, ttl)
}

func (m *fakeMount) WithIssuer(ref string) Authority {
	if f := m.issuer(ref); f != nil {
		return f
	}
	return &fakeUpstream{fail: 1 << 30}
}

func (m *fakeMount) LookupIssuer(_ context.Context, ref string) (*Issuer, error) {
	f := m.issuer(ref)
	if f == nil {
		return nil, fmt.Errorf("no issuer %q", ref)
	}
	return &Issuer{ID: ref, Cert: f.root}, nil
}

func (m *fakeMount) NewRoot(_ context.Context, req RootRequest) (*Issuer, error) {
	f := newFakeUpstream(m.t)
	m.mu.Lock()
	id := fmt.Sprintf("id-%d", len(m.issuers)+1)
	m.issuers[id] = f
	m.mu.Unlock()
	return &Issuer{ID: id, Name: req.Name, Cert: f.root}, nil
}

func startSource(t *testing.T, mount *fakeMount, dir string) (*Source, context.CancelFunc) {
	t.Helper()
	cfg := testConfig(t, mount, dir)
	cfg.ReloadInterval = 10 * time.Millisecond
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return s, stop
}

func wantErr(t *testing.T, err error, contains string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), contains) {
		t.Fatalf("error = %v, want one containing %q", err, contains)
	}
}

func bundleFile(t *testing.T, dir string) []*x509.Certificate {
	t.Helper()
	certs, err := pemfile.ReadCertificates(filepath.Join(dir, RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func sameCerts(a []*x509.Certificate, b ...*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, c := range b {
		if !containsCert(a, c) {
			return false
		}
	}
	return true
}

// TestRotationPhases rotates a running Source from one issuer of the
// mount to a new one: prepare, activate and retire, with the refusals
// before each step is safe, and a restart at the end.
func TestRotationPhases(t *testing.T) {
	mount := newFakeMount(t)
	dir := t.TempDir()
	s, stop := startSource(t, mount, dir)
	clk := testclock.New(time.Now())
	r := &rotation.Engine{Backend: &Backend{Dir: dir, Upstream: mount, TrustDomain: td}, Now: clk.Now,
		Policy: rotation.Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute}}
	ctx := context.Background()
	root1 := s.Authority().Root()

	st, err := r.Status(context.Background())
	if err != nil || st.Phase != rotation.PhaseSteady || len(st.Roots) != 1 || st.Roots[0].State != rotation.RootActive || st.Mode != rotation.ModeUpstream {
		t.Fatalf("status = %+v, %v", st, err)
	}
	wantErr(t, r.Activate(ctx, false), "nothing to activate")
	wantErr(t, r.Retire(ctx, false), "nothing to retire")
	wantErr(t, r.Prepare(ctx, "id-1"), "nothing to rotate to")
	wantErr(t, r.Prepare(ctx, "no-such-issuer"), "no issuer")

	// prepare: the new root joins the bundle; the old one signs.
	if err := r.Prepare(ctx, ""); err != nil {
		t.Fatal(err)
	}
	st, err = r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := mount.LookupIssuer(ctx, st.NextIssuer)
	if err != nil {
		t.Fatal(err)
	}
	root2 := iss.Root()
	testpoll.Until(t, "the bundle holds both roots", func() bool { return sameCerts(s.Authority().Roots, root1, root2) })
	testpoll.Until(t, "root-cert.pem holds both roots", func() bool { return sameCerts(bundleFile(t, dir), root1, root2) })
	if !s.Authority().Root().Equal(root1) {
		t.Fatal("after prepare, the old root must still sign")
	}
	wantErr(t, r.Prepare(ctx, ""), "already in progress")
	wantErr(t, r.Activate(ctx, false), "wait until")
	if st, _ := r.Status(context.Background()); st.Phase != rotation.PhasePrepared || st.NextIssuer != iss.ID || st.ActivateAfter.IsZero() {
		t.Fatalf("status after prepare = %+v", st)
	}

	// activate: the new issuer signs a new intermediate.
	clk.Add(time.Hour)
	if err := r.Activate(ctx, false); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the intermediate chains to the new root", func() bool { return s.Authority().Root().Equal(root2) })
	if !sameCerts(s.Authority().Roots, root1, root2) {
		t.Fatal("after activation, the bundle must keep the old root")
	}
	st, _ = r.Status(context.Background())
	for _, rs := range st.Roots {
		want := rotation.RootRetiring
		if rs.Cert.Equal(root2) {
			want = rotation.RootActive
		}
		if rs.State != want {
			t.Errorf("root %s is %s, want %s", rs.Subject, rs.State, want)
		}
	}
	wantErr(t, r.Retire(ctx, false), "may be valid until")

	// retire: the old root leaves the bundle, and stays out.
	clk.Add(time.Hour + time.Minute)
	if err := r.Retire(ctx, false); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the bundle holds only the new root", func() bool { return sameCerts(s.Authority().Roots, root2) })
	testpoll.Until(t, "root-cert.pem holds only the new root", func() bool { return sameCerts(bundleFile(t, dir), root2) })
	if st, _ := r.Status(context.Background()); st.Phase != rotation.PhaseSteady || st.Issuer != iss.ID || len(st.Roots) != 1 {
		t.Fatalf("status after retire = %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, NextRootCertFile)); !os.IsNotExist(err) {
		t.Errorf("%s is left after retirement: %v", NextRootCertFile, err)
	}

	// A restart signs with the activated issuer, not the mount's default.
	stop()
	s2, _ := startSource(t, mount, dir)
	if err := s2.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if !s2.Authority().Root().Equal(root2) || !sameCerts(s2.Authority().Roots, root2) {
		t.Fatal("after a restart and a renewal, the CA must sign under the new root alone")
	}
}

// TestRotationRefusesUnsafeSteps checks the refusals that depend on the
// running CA: activating a root it has not served, retiring a root it
// still signs under, and a damaged rotation.json.
func TestRotationRefusesUnsafeSteps(t *testing.T) {
	mount := newFakeMount(t)
	dir := t.TempDir()
	_, stop := startSource(t, mount, dir)
	stop() // the CA is down: nothing it would do happens.
	r := &rotation.Engine{Backend: &Backend{Dir: dir, Upstream: mount}, Policy: rotation.Policy{PropagationDelay: time.Millisecond, MaxTTL: time.Minute}}
	ctx := context.Background()
	if err := r.Prepare(ctx, ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	wantErr(t, r.Activate(ctx, false), "has not served the prepared root")
	if err := r.Activate(ctx, true); err != nil {
		t.Fatal(err)
	}
	r.Policy.MaxTTL, r.Policy.RetireMargin = time.Millisecond, time.Millisecond
	r.Now = func() time.Time { return time.Now().Add(time.Hour) }
	wantErr(t, r.Retire(ctx, false), "still signs under the old root")

	// A CA started now serves both roots and switches to the new issuer.
	s, _ := startSource(t, mount, dir)
	next, _ := readNextRoot(dir)
	if !s.Authority().Root().Equal(next) || len(s.Authority().Roots) != 2 {
		t.Fatalf("a CA started in the activated phase signs under %q with %d roots", s.Authority().Root().Subject, len(s.Authority().Roots))
	}
	if err := r.Retire(ctx, false); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the old root is retired", func() bool { return len(s.Authority().Roots) == 1 })

	// A damaged rotation.json is refused at start and ignored while running.
	state := filepath.Join(dir, rotation.File)
	if err := os.WriteFile(state, []byte(`{"phase":"half-done"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !s.Authority().Root().Equal(next) || len(s.Authority().Roots) != 1 {
		t.Fatal("a damaged rotation.json changed the running CA")
	}
	cfg := testConfig(t, mount, dir)
	_, err := New(ctx, cfg)
	wantErr(t, err, `unknown phase "half-done"`)
}
