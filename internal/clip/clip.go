// Package clip shortens text quoted in error messages, so that a long
// malformed input does not make a longer message.
package clip

// String returns s cut to at most n bytes, with "..." after it when it
// was cut.
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
