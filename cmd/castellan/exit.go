package main

import "github.com/castellan-mesh/castellan/internal/cliflag"

// Exit statuses of castellan. 0, 1 and 2 are every command's (success,
// error, usage: cliflag.ExitOK, ExitError, ExitUsage); the statuses below
// are each one command's result, and no two commands share one, so a
// script can tell them apart without knowing which command ran.
const (
	// exitDenied: "authz check" evaluated the request and denies it.
	exitDenied = 3
	// exitPolicyProblems: "authz translate" or "authz mtls" rejected some
	// policies; the output was computed from the others (an invalid
	// policy is enforced fail-closed).
	exitPolicyProblems = 4
	// exitCertWarning: "cert inspect" found warnings, and nothing invalid.
	exitCertWarning = 5
	// exitCertInvalid: "cert inspect" found the certificates invalid.
	exitCertInvalid = 6
)

// exitStatusHelp is the table of exit statuses in "castellan --help".
const exitStatusHelp = `Exit status:
  0  success
  1  error
  2  usage: a bad flag, argument or combination of flags
  3  authz check: the request is denied
  4  authz translate, authz mtls: some policies were rejected (the others were used)
  5  cert inspect: warnings
  6  cert inspect: invalid`

// status returns err with the exit status code.
func status(code int, err error) error { return cliflag.StatusError{Code: code, Err: err} }
