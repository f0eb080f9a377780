package rotation_test

import (
	"context"
	"crypto/ecdsa"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/kms"
)

// TestHSMRootRotationUnderLiveMTLS rotates a self-signed root whose key is
// in an HSM (SoftHSM2 over PKCS#11, as "castellan ca --signer-key-uri
// pkcs11:..." holds it) while two pairs of mTLS endpoints, fed by two
// agents over SDS, handshake continuously. The next root's key is created
// in the same token, never in a file; no handshake may fail.
func TestHSMRootRotationUnderLiveMTLS(t *testing.T) {
	uri := harness.SoftHSMToken(t, "castellan", "root")
	var ring *kms.Ring
	env := newEnv(t, nil, func(ctx context.Context, dataDir string, cfg *server.Config) {
		var err error
		ring, err = kms.NewRing(ctx, uri, kms.ECDSAP256, kms.Config{})
		must(t, err)
		t.Cleanup(func() { ring.Close() })
		key, _, err := ring.OpenOrCreate(ctx, "")
		must(t, err)
		harness.UseDataDir(t, cfg, material.Config{Dir: dataDir, Signer: key, Keys: ring, ReloadInterval: 100 * time.Millisecond})
	})
	r := &rotation.Engine{Backend: &material.Backend{Dir: env.dataDir, TrustDomain: td, Keys: ring},
		Policy: rotation.Policy{PropagationDelay: time.Second, MaxTTL: svidTTL, RetireMargin: time.Second}}
	newRoot := env.rotateSelfSigned(t, r)

	ents, err := os.ReadDir(env.dataDir)
	must(t, err)
	for _, e := range ents {
		// A key file; jwt-keys.json only names keys in the HSM.
		if strings.HasSuffix(e.Name(), ".pem") && strings.Contains(e.Name(), "key") {
			t.Fatalf("the data directory holds %s although the root keys are in the HSM", e.Name())
		}
	}
	st, err := rotation.ReadState(env.dataDir)
	must(t, err)
	if st.Phase != rotation.PhaseSteady || st.Key == "" {
		t.Fatalf("rotation state after retirement: %+v; want steady, naming the new key", st)
	}
	key, err := ring.Open(context.Background(), st.Key)
	must(t, err)
	if !newRoot.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("the new root is not for the HSM key %q", st.Key)
	}
	if got := env.ca.Source().Authority().Cert; !got.Equal(newRoot) {
		t.Fatalf("the CA signs under %s, not the new root", got.Subject)
	}
}
