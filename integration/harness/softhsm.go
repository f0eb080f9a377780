package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSMModule is SoftHSM2's PKCS#11 module, as Debian installs it.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSMToken creates a SoftHSM2 token labelled label, user PIN 1234, in
// a fresh token directory named by a SOFTHSM2_CONF in a temp dir, and
// returns the pkcs11: URI of the key object in it. It fails when SoftHSM2
// is missing (scripts/tools.sh installs it), or skips if
// CASTELLAN_ALLOW_SKIP is set.
func SoftHSMToken(t testing.TB, label, object string) string {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if _, serr := os.Stat(SoftHSMModule); err != nil || serr != nil {
		SkipUnlessAllowed(t, fmt.Sprintf("SoftHSM2 is not installed (%s); run scripts/tools.sh (make tools)", SoftHSMModule))
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return "pkcs11:token=" + label + ";object=" + object + "?module-path=" + SoftHSMModule + "&pin-value=1234"
}
