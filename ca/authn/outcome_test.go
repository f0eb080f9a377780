package authn

import "testing"

// checkOutcome checks the result of a call against a table case: want
// and no error when reason is empty, a rejection for reason otherwise.
func checkOutcome[T comparable](t *testing.T, got T, err error, want T, reason Reason) {
	t.Helper()
	switch {
	case reason == "" && err != nil:
		t.Fatalf("error %v, want %+v", err, want)
	case reason == "" && got != want:
		t.Fatalf("got %+v, want %+v", got, want)
	case reason != "":
		wantRejected(t, got, err, reason)
	}
}

// wantRejected fails the test unless err is a rejection for reason; got
// is what the call returned, for the failure message.
func wantRejected(t *testing.T, got any, err error, reason Reason) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("got %+v, want a rejection for %s", got, reason)
	case ReasonOf(err) != reason:
		t.Fatalf("reason = %s, want %s (%v)", ReasonOf(err), reason, err)
	}
}
