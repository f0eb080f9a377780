package main

import (
	"os"
	"runtime/debug"
)

// defaultCAGCPercent is the garbage collector target of "castellan ca".
// Issuance allocates quickly against a live heap of a few MiB; at Go's
// default of 100 the collector runs several times a second and costs about
// a tenth of the CA's CPU per SVID. 400 costs some 15-20 MiB more RSS under
// full load (scripts/bench-ca.sh).
const defaultCAGCPercent = 400

// setGCPercent sets the collector's target unless GOGC is set in the
// environment, which wins. A negative percent turns the collector off, as
// GOGC=off does.
func setGCPercent(percent int) {
	if _, ok := os.LookupEnv("GOGC"); ok {
		return
	}
	debug.SetGCPercent(percent)
}
