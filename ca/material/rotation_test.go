package material

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestSelfSignedRotation(t *testing.T) {
	dir := t.TempDir()
	s, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	old := s.Authority().Cert
	now := time.Now()
	r := &rotation.Engine{Backend: &Backend{Dir: dir, TrustDomain: td}, Policy: rotation.Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour}, Now: func() time.Time { return now }, Logger: quiet()}
	ctx := context.Background()

	if err := r.Activate(ctx, false); err == nil || !strings.Contains(err.Error(), "nothing to activate") {
		t.Fatalf("activate in steady phase: %v", err)
	}
	// prepare: two roots in the bundle, the old one still signs.
	if err := r.Prepare(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := r.Prepare(ctx, ""); err == nil {
		t.Fatal("a second prepare was accepted")
	}
	s.Reload()
	a := s.Authority()
	if len(a.Roots) != 2 || !a.Cert.Equal(old) {
		t.Fatalf("after prepare: %d roots, signing with %q", len(a.Roots), a.Cert.Subject)
	}
	st, _ := r.Status(context.Background())
	if st.Phase != rotation.PhasePrepared || st.Roots[1].State != rotation.RootPrepared || !st.ActivateAfter.Equal(now.UTC().Add(time.Hour)) {
		t.Fatalf("status after prepare: %+v", st)
	}
	// activate: refused before the propagation delay.
	if err := r.Activate(ctx, false); err == nil || !strings.Contains(err.Error(), "wait until") {
		t.Fatalf("early activate: %v", err)
	}
	now = now.Add(time.Hour)
	if err := r.Activate(ctx, false); err != nil {
		t.Fatal(err)
	}
	s.Reload()
	a = s.Authority()
	if a.Cert.Equal(old) || len(a.Roots) != 2 {
		t.Fatal("after activate the new root does not sign, or the old one left the bundle")
	}
	// retire: refused while old SVIDs may be valid.
	if err := r.Retire(ctx, false); err == nil || !strings.Contains(err.Error(), "may be valid until") {
		t.Fatalf("early retire: %v", err)
	}
	now = now.Add(2 * time.Hour)
	if err := r.Retire(ctx, false); err != nil {
		t.Fatal(err)
	}
	s.Reload()
	if a := s.Authority(); len(a.Roots) != 1 || a.Root().Equal(old) {
		t.Fatal("after retire the old root is still trusted")
	}
	// A restart on the directory keeps the new root.
	s2, err := open(t, dir)
	if err != nil || !s2.Authority().Cert.Equal(s.Authority().Cert) {
		t.Fatalf("restart after rotation: %v", err)
	}
}

func TestAutomaticRotation(t *testing.T) {
	dir := t.TempDir()
	if _, err := open(t, dir, func(c *Config) { c.RootTTL = 48 * time.Hour }); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r := &rotation.Engine{Backend: &Backend{Dir: dir, TrustDomain: td}, Policy: rotation.Policy{PropagationDelay: time.Minute, MaxTTL: time.Minute}, Now: func() time.Time { return now }, Logger: quiet()}
	ctx := context.Background()
	steps := []struct {
		advance time.Duration
		want    string
	}{
		{0, ""}, // 48h left, threshold 24h
		{25 * time.Hour, "prepare"},
		{0, ""}, // propagation pending
		{time.Minute, "activate"},
		{time.Minute, ""}, // old SVIDs may be valid
		{10 * time.Minute, "retire"},
		{0, ""},
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		did, err := r.Step(ctx, 24*time.Hour)
		if err != nil || did != st.want {
			t.Fatalf("step %d: did %q (%v), want %q", i, did, err, st.want)
		}
	}
}

func TestPluggedInRotation(t *testing.T) {
	dir := t.TempDir()
	root1 := testpki.NewCA(t, "root-1")
	writeCACerts(t, dir, root1, "inter-1")
	s, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	nextDir := t.TempDir()
	root2 := testpki.NewCA(t, "root-2")
	inter2 := writeCACerts(t, nextDir, root2, "inter-2")
	r := &rotation.Engine{Backend: &Backend{Dir: dir}, Policy: rotation.Policy{PropagationDelay: time.Millisecond, MaxTTL: time.Millisecond}, Logger: quiet()}
	ctx := context.Background()
	if err := r.Prepare(ctx, ""); err == nil {
		t.Fatal("plugged-in prepare without a directory was accepted")
	}
	if err := r.Prepare(ctx, nextDir); err != nil {
		t.Fatal(err)
	}
	s.Reload()
	if a := s.Authority(); len(a.Roots) != 2 || !a.Root().Equal(root1.Cert) {
		t.Fatal("prepare did not add the new root alone")
	}
	time.Sleep(5 * time.Millisecond)
	if err := r.Activate(ctx, false); err != nil {
		t.Fatal(err)
	}
	s.Reload()
	if a := s.Authority(); !a.Cert.Equal(inter2) || len(a.Roots) != 2 {
		t.Fatalf("activate: signing with %q, %d roots (reload error %v)", a.Cert.Subject, len(a.Roots), s.LastReloadError())
	}
	time.Sleep(3 * time.Minute / 1000)
	if err := r.Retire(ctx, true); err != nil {
		t.Fatal(err)
	}
	s.Reload()
	if a := s.Authority(); len(a.Roots) != 1 || !a.Root().Equal(root2.Cert) {
		t.Fatal("retire left the old root")
	}
}

// TestPluggedInStatusFromTheStore: the running Store's rotation takes the
// active root of plugged-in material from what it has loaded, so a status
// scrape neither opens the key nor fails while the files are being
// replaced; without a Store (castellan ca rotate) the files are read.
func TestPluggedInStatusFromTheStore(t *testing.T) {
	dir := t.TempDir()
	root := testpki.NewCA(t, "root-1")
	writeCACerts(t, dir, root, "inter-1")
	s, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	// A key being replaced: present, but not (yet) a key.
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := s.Rotation(rotation.Policy{}).Status(ctx)
	if err != nil {
		t.Fatalf("status of the running Store: %v", err)
	}
	if st.Mode != rotation.ModePluggedIn || len(st.Roots) != 1 || st.Roots[0].State != rotation.RootActive {
		t.Fatalf("status = %+v, want the one plugged-in root active", st)
	}
	offline := &rotation.Engine{Backend: &Backend{Dir: dir}, Logger: quiet()}
	if _, err := offline.Status(ctx); err == nil {
		t.Fatal("status from the directory with its key half-written: want an error")
	}
}

// FuzzReadRotationState feeds rotation.json arbitrary bytes: it is read
// or refused with an error, never half-read, and a state it accepts
// survives a write and a read unchanged.
func FuzzReadRotationState(f *testing.F) {
	f.Add([]byte(`{"phase":"prepared","prepared_at":"2026-01-02T03:04:05Z","next_issuer":"abc"}`))
	f.Add([]byte(`{"phase":"steady","issuer":"x","retired":["00ff"]}`))
	f.Add([]byte(`{"phase":"half-done"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, RotationFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := rotation.ReadState(dir)
		if err != nil {
			if !strings.Contains(err.Error(), RotationFile) && !strings.Contains(err.Error(), "material:") {
				t.Fatalf("error does not say where: %v", err)
			}
			return
		}
		switch st.Phase {
		case rotation.PhaseSteady, rotation.PhasePrepared, rotation.PhaseActivated:
		default:
			t.Fatalf("accepted phase %q", st.Phase)
		}
		if err := rotation.WriteState(dir, st); err != nil {
			t.Fatal(err)
		}
		again, err := rotation.ReadState(dir)
		if err != nil || again.Phase != st.Phase || again.Issuer != st.Issuer || !again.PreparedAt.Equal(st.PreparedAt) || len(again.Retired) != len(st.Retired) {
			t.Fatalf("state changed across a write: %+v → %+v (%v)", st, again, err)
		}
	})
}

func TestRotationStateRequire(t *testing.T) {
	tests := []struct {
		name    string
		phase   rotation.Phase
		want    rotation.Phase
		wantErr string
	}{
		{"prepare when steady", rotation.PhaseSteady, rotation.PhaseSteady, ""},
		{"prepare during a rotation", rotation.PhaseActivated, rotation.PhaseSteady, "already in progress (phase activated)"},
		{"activate before prepare", rotation.PhaseSteady, rotation.PhasePrepared, "nothing to activate (phase steady)"},
		{"retire before activate", rotation.PhasePrepared, rotation.PhaseActivated, "nothing to retire (phase prepared)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rotation.State{Phase: tt.phase}.Require(tt.want)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
