// Package jwtaudience holds the one rule for the audiences of a JWT-SVID,
// shared by the CA that signs it and the agent that asks for it, so that
// the agent refuses a bad list before any call and links nothing of the
// CA.
package jwtaudience

import "fmt"

// Limits of an audience list.
const (
	// MaxCount is the most audiences one token names.
	MaxCount = 16
	// MaxLen is the longest audience, in bytes.
	MaxLen = 256
)

// Error is an audience list that is refused.
type Error struct{ msg string }

func (e *Error) Error() string { return "jwtsvid: " + e.msg }

// Check refuses an audience list a JWT-SVID may not carry: none, more than
// MaxCount, an empty or duplicate one, one longer than MaxLen or holding
// anything but printable ASCII. The error is an *Error.
func Check(aud []string) error {
	bad := func(format string, args ...any) error { return &Error{msg: fmt.Sprintf(format, args...)} }
	switch {
	case len(aud) == 0:
		return bad("no audience; a JWT-SVID needs at least one")
	case len(aud) > MaxCount:
		return bad("%d audiences, more than %d", len(aud), MaxCount)
	}
	seen := make(map[string]bool, len(aud))
	for i, a := range aud {
		switch {
		case a == "":
			return bad("audience %d is empty", i)
		case len(a) > MaxLen:
			return bad("audience %d is %d bytes, more than %d", i, len(a), MaxLen)
		case seen[a]:
			return bad("audience %q is named twice", a)
		}
		for j := 0; j < len(a); j++ {
			if a[j] < 0x21 || a[j] > 0x7e {
				return bad("audience %d holds byte 0x%02x at %d; want printable ASCII without spaces", i, a[j], j)
			}
		}
		seen[a] = true
	}
	return nil
}
