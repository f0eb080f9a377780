package harness

import (
	"os"
	"strconv"
	"testing"
)

// AllowSkipEnv names the environment variable that lets a test whose real
// component is missing skip instead of failing.
const AllowSkipEnv = "CASTELLAN_ALLOW_SKIP"

// SkipUnlessAllowed handles a real component a test needs but cannot
// find (a Vault server, SoftHSM2, pilot-agent): the test fails, saying
// how to get the component, unless CASTELLAN_ALLOW_SKIP is set to a true
// value (1, true), when it is skipped. "make test" builds every component
// first, so a skip there is never silent: it has to be asked for.
func SkipUnlessAllowed(t testing.TB, msg string) {
	t.Helper()
	if allowSkip(os.Getenv(AllowSkipEnv)) {
		t.Skip(msg + " (skipped: " + AllowSkipEnv + " is set)")
	}
	t.Fatal(msg + "; set " + AllowSkipEnv + "=1 to skip the tests that need it instead")
}

// allowSkip parses the value of CASTELLAN_ALLOW_SKIP.
func allowSkip(v string) bool {
	ok, err := strconv.ParseBool(v)
	return err == nil && ok
}
