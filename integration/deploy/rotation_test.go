package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRootRotationAcrossReplicas gives three replicas a root that is due
// for rotation, and stops the leader in the middle of the rotation. The
// new root reaches every replica's bundle and every namespace before it
// signs; SVIDs of the old root verify until it is retired; and the new
// leader finishes the rotation the old one began.
func TestRootRotationAcrossReplicas(t *testing.T) {
	api, caClient := startCluster(t)
	w := newWorkload(t, api, "team-a", "web")
	ctx := context.Background()

	// A root made by Castellan two hours from its end.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: td, TTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	oldPEM := pemfile.EncodeCertificates([]*x509.Certificate{oldRoot})
	_, err = api.Client.CoreV1().Secrets(caNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: kubestore.DefaultSecretName, Namespace: caNamespace,
			Labels: map[string]string{kubestore.ManagedByLabel: kubestore.ManagedByValue}},
		Data: map[string][]byte{kubestore.CACertKey: oldPEM, kubestore.CAKeyKey: keyPEM, kubestore.RootCertKey: oldPEM},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	rotating := func(o *replicaOptions) {
		o.rotateBefore = 3 * time.Hour // the new roots (10 years) are not due
		o.rotationPolicy = rotation.Policy{PropagationDelay: 4 * time.Second, MaxTTL: 2 * time.Second, RetireMargin: time.Second}
		o.rotationInterval = 200 * time.Millisecond
	}
	var reps []*replica
	for _, name := range []string{"ca-0", "ca-1", "ca-2"} {
		reps = append(reps, launchReplica(t, caClient, name, rotating))
	}
	for _, r := range reps {
		r.serve(t, 60*time.Second)
	}
	oldBundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{oldRoot})

	// An SVID of the old root, to check it keeps verifying.
	oldChain, err := reps[0].client(t, poolOf([]*x509.Certificate{oldRoot})).CreateCertificate(ctx, w.token, mustCSR(t, w), 0)
	if err != nil {
		t.Fatal(err)
	}

	// Prepared: every replica and every namespace has both roots.
	harness.WaitFor(t, 20*time.Second, "every replica to hold two roots", func() bool {
		for _, r := range reps {
			if len(r.store.Authority().Roots) != 2 {
				return false
			}
		}
		return true
	})
	harness.WaitFor(t, 10*time.Second, "the ConfigMap in team-a to hold two roots", func() bool {
		return strings.Count(trustConfigMap(api, "team-a"), "BEGIN CERTIFICATE") == 2
	})
	newRoot := reps[0].store.Authority().Roots[1]

	// Stop the leader in the middle of the rotation.
	harness.WaitFor(t, 10*time.Second, "a leader", func() bool { return len(leaders(reps)) == 1 })
	leader := leaders(reps)[0]
	if ann := caSecret(t, api).Annotations[kubestore.RotationPhaseAnnotation]; ann != kubestore.PhasePrepared {
		t.Fatalf("rotation phase = %q when stopping the leader, want %q", ann, kubestore.PhasePrepared)
	}
	leader.stop()
	var rest []*replica
	for _, r := range reps {
		if r != leader {
			rest = append(rest, r)
		}
	}

	// Activated by the new leader: every replica signs with the new root.
	harness.WaitFor(t, 20*time.Second, "the new root to sign everywhere", func() bool {
		for _, r := range rest {
			if !r.store.Authority().Cert.Equal(newRoot) {
				return false
			}
		}
		return true
	})
	both := x509bundle.FromX509Authorities(td, []*x509.Certificate{oldRoot, newRoot})
	newOnly := x509bundle.FromX509Authorities(td, []*x509.Certificate{newRoot})
	for _, r := range rest {
		chain, err := r.client(t, poolOf([]*x509.Certificate{oldRoot, newRoot})).CreateCertificate(ctx, w.token, mustCSR(t, w), 0)
		if err != nil {
			t.Fatalf("replica %s after activation: %v", r.name, err)
		}
		if err := verifyChain(chain, w, newOnly); err != nil {
			t.Fatalf("replica %s: the SVID does not chain to the new root: %v", r.name, err)
		}
	}
	if err := verifyChain(oldChain, w, both); err != nil {
		t.Fatalf("an SVID of the old root stopped verifying before retirement: %v", err)
	}
	if err := verifyChain(oldChain, w, oldBundle); err != nil {
		t.Fatal(err)
	}

	// Retired: only the new root, everywhere.
	harness.WaitFor(t, 20*time.Second, "the old root to be retired everywhere", func() bool {
		for _, r := range rest {
			if rs := r.store.Authority().Roots; len(rs) != 1 || !rs[0].Equal(newRoot) {
				return false
			}
		}
		return trustConfigMap(api, "team-a") == string(pemfile.EncodeCertificates([]*x509.Certificate{newRoot}))
	})
	sec := caSecret(t, api)
	if _, ok := sec.Annotations[kubestore.RotationPhaseAnnotation]; ok {
		t.Fatalf("rotation annotations left: %v", sec.Annotations)
	}
	steps := map[string]float64{}
	for _, r := range reps {
		for _, step := range []string{"prepare", "activate", "retire"} {
			steps[step] += testmetric.Sum(t, r.reg, "castellan_ca_rotation_steps_total", step)
		}
	}
	if steps["prepare"] != 1 || steps["activate"] != 1 || steps["retire"] != 1 {
		t.Fatalf("rotation steps across replicas = %v, want one of each", steps)
	}
	t.Logf("rotation finished by the new leader after %s stopped; steps %v", leader.name, steps)
}

func mustCSR(t testing.TB, w workload) []byte {
	t.Helper()
	csr, err := w.csr()
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
