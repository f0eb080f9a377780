package jwtsvid_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/rotation"
)

// TestAutomaticJWTKeyRotation: with a short policy, the CA rotates its
// JWT key by itself, and a go-spiffe JWTSource sees it: the next key is
// published, then signs once it has been published for the propagation
// delay, while tokens of the previous key still validate. The CA's
// metrics count the steps.
func TestAutomaticJWTKeyRotation(t *testing.T) {
	const propagation = 12 * time.Second
	s := start(t, "--root-propagation-delay", propagation.String(), "--jwt-key-rotate-every", "30s", "--jwt-svid-ttl", "10s")
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
	defer cancel()
	source, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+s.socket)))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	first := mustFetch(t, source, "a")
	firstKid := kidOf(t, first)

	n := 0
	deadline := time.Now().Add(3 * waitTimeout)
	for {
		n++
		if kidOf(t, mustFetch(t, source, "b"+strings.Repeat("x", n))) != firstKid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token of another JWT key within %s; CA logs:\n%s", 3*waitTimeout, s.ca.Logs())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if _, err := spiffejwt.ParseAndValidate(first, source, []string{"a"}); err != nil {
		t.Fatalf("a token of the previous key after the automatic activation: %v", err)
	}
	st, _, err := jwtsvid.ReadState(s.ca.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != rotation.PhaseActivated {
		t.Fatalf("phase %s after the automatic activation", st.Phase)
	}
	if published := st.ActivatedAt.Sub(st.PreparedAt); published < propagation {
		t.Fatalf("the key was activated %s after it was prepared, before the propagation delay (%s)", published, propagation)
	}
	metrics := httpGetString(t, "http://"+s.ca.HTTPAddr+"/metrics")
	for _, want := range []string{
		`castellan_ca_jwt_rotation_steps_total{step="prepare"} 1`,
		`castellan_ca_jwt_rotation_steps_total{step="activate"} 1`,
		`castellan_ca_jwt_rotation_phase{phase="activated"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, grepLines(metrics, "castellan_ca_jwt_"))
		}
	}
}

func httpGetString(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAutomaticJWTKeyRotationReplicas: two replicas of a Kubernetes-backed
// CA (--material=kubernetes, one API server) both run the automatic JWT
// key rotation on the state in their shared Secret: between them they
// take one prepare and one activate, and both end up signing with the
// same new key.
func TestAutomaticJWTKeyRotationReplicas(t *testing.T) {
	_, authCtx, replicas, clients := startReplicas(t, "--root-propagation-delay", "8s", "--jwt-key-rotate-every", "20s", "--jwt-svid-ttl", "10s")
	kids := func() [2]string {
		var out [2]string
		for i, c := range clients {
			resp, err := c.MintJWTSVID(authCtx, &jwtapi.MintJWTSVIDRequest{Audience: []string{"x"}})
			if err != nil {
				t.Fatal(err)
			}
			out[i] = kidOf(t, resp.GetToken())
		}
		return out
	}
	first := kids()
	if first[0] != first[1] {
		t.Fatalf("the replicas sign with different keys: %v", first)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * waitTimeout)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; logs:\n%s\n%s", what, replicas[0].Logs(), replicas[1].Logs())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitFor("both replicas signing with a new key", func() bool {
		k := kids()
		return k[0] == k[1] && k[0] != first[0]
	})
	steps := map[string]float64{}
	for _, r := range replicas {
		for _, step := range []string{"prepare", "activate", "error"} {
			steps[step] += metricValue(httpGetString(t, "http://"+r.HTTPAddr+"/metrics"), `castellan_ca_jwt_rotation_steps_total{step="`+step+`"}`)
		}
	}
	if steps["prepare"] != 1 || steps["activate"] != 1 || steps["error"] != 0 {
		t.Fatalf("the replicas took %v steps between them; want one prepare and one activate", steps)
	}
}

// metricValue returns the value of series in a Prometheus text exposition
// (0 when absent).
func metricValue(text, series string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}
