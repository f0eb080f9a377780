package kms

import (
	"errors"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		name    string
		uri     string
		want    string // canonical String() on success
		part    string // URIError.Part on failure
		reason  string // substring of the reason on failure
		check   func(t *testing.T, u *URI)
		noLeaks string // must not appear in the error
	}{
		{name: "file", uri: "file:///var/lib/castellan/ca-key.pem", want: "file:///var/lib/castellan/ca-key.pem"},
		{name: "file localhost", uri: "file://localhost/k.pem", want: "file:///k.pem"},
		{name: "file cleaned", uri: "file:///a/../b/./k.pem", want: "file:///b/k.pem"},
		{name: "file relative", uri: "file:key.pem", part: "path", reason: "not absolute"},
		{name: "file remote host", uri: "file://example.com/k.pem", part: "host", reason: "only local files"},
		{name: "file no path", uri: "file://", part: "path", reason: "missing absolute path"},
		{name: "file directory", uri: "file:///etc/", part: "path", reason: "directory"},
		{name: "file query", uri: "file:///k.pem?x=1", part: "query"},
		{name: "file fragment", uri: "file:///k.pem#x", part: "fragment"},
		{name: "no scheme", uri: "/etc/key.pem", part: "scheme", reason: "missing scheme"},
		{name: "empty", uri: "", part: "scheme", reason: "empty"},
		{name: "unknown scheme", uri: "awskms:key-id=1", part: "scheme", reason: `unknown scheme "awskms"`},
		{name: "scheme case", uri: "PKCS11:token=t;object=o", want: "pkcs11:token=t;object=o"},

		{
			name: "pkcs11 full",
			uri:  "pkcs11:token=castellan;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234",
			want: "pkcs11:token=castellan;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=REDACTED",
			check: func(t *testing.T, u *URI) {
				if u.PKCS11.PINValue != "1234" || u.PKCS11.Token != "castellan" || u.PKCS11.Object != "ca" {
					t.Errorf("attributes = %+v", u.PKCS11)
				}
			},
		},
		{
			name: "pkcs11 slot and id",
			uri:  "pkcs11:slot-id=3;id=%01%02;type=private?pin-source=/etc/pin&max-sessions=8",
			want: "pkcs11:slot-id=3;id=%01%02?pin-source=/etc/pin&max-sessions=8",
			check: func(t *testing.T, u *URI) {
				if !u.PKCS11.HasSlotID || u.PKCS11.SlotID != 3 || string(u.PKCS11.ID) != "\x01\x02" || u.PKCS11.MaxSessions != 8 {
					t.Errorf("attributes = %+v", u.PKCS11)
				}
			},
		},
		{name: "pkcs11 serial", uri: "pkcs11:serial=abc123;object=ca", want: "pkcs11:serial=abc123;object=ca"},
		{name: "pkcs11 escaped label", uri: "pkcs11:token=my%20token;object=a%3Bb", want: "pkcs11:token=my%20token;object=a%3Bb"},
		{name: "pkcs11 no token", uri: "pkcs11:object=ca", part: "token", reason: "no token named"},
		{name: "pkcs11 two tokens", uri: "pkcs11:token=a;serial=b;object=ca", part: "token", reason: "exclusive"},
		{name: "pkcs11 no key", uri: "pkcs11:token=a", part: "object", reason: "no key named"},
		{name: "pkcs11 bad slot", uri: "pkcs11:slot-id=x;object=ca", part: "slot-id", reason: "not a slot number"},
		{name: "pkcs11 negative slot", uri: "pkcs11:slot-id=-1;object=ca", part: "slot-id"},
		{name: "pkcs11 typo", uri: "pkcs11:token=a;objct=ca", part: "objct", reason: "unknown"},
		{name: "pkcs11 module in path", uri: "pkcs11:token=a;object=ca;module-path=/x.so", part: "module-path", reason: "belongs in the query part"},
		{name: "pkcs11 token in query", uri: "pkcs11:object=ca?token=a", part: "token", reason: "belongs in the path part"},
		{name: "pkcs11 duplicate", uri: "pkcs11:token=a;token=b;object=ca", part: "token", reason: "more than once"},
		{name: "pkcs11 no value", uri: "pkcs11:token;object=ca", part: "token", reason: "no value"},
		{name: "pkcs11 empty value", uri: "pkcs11:token=;object=ca", part: "token", reason: "empty"},
		{name: "pkcs11 public type", uri: "pkcs11:token=a;object=ca;type=public", part: "type"},
		{name: "pkcs11 relative module", uri: "pkcs11:token=a;object=ca?module-path=lib/x.so", part: "module-path", reason: "absolute"},
		{name: "pkcs11 bare module name", uri: "pkcs11:token=a;object=ca?module-path=libsofthsm2.so", want: "pkcs11:token=a;object=ca?module-path=libsofthsm2.so"},
		{name: "pkcs11 relative pin source", uri: "pkcs11:token=a;object=ca?pin-source=pin.txt", part: "pin-source"},
		{name: "pkcs11 two pins", uri: "pkcs11:token=a;object=ca?pin-source=/p&pin-value=s3cret", part: "pin-value", reason: "exclusive", noLeaks: "s3cret"},
		{name: "pkcs11 bad escape", uri: "pkcs11:token=a%zz;object=ca", part: "token", reason: "percent-encoding"},
		{name: "pkcs11 bad max sessions", uri: "pkcs11:token=a;object=ca?max-sessions=0", part: "max-sessions"},
		{name: "pkcs11 pin not leaked", uri: "pkcs11:objct=ca?pin-value=hunter2", part: "objct", noLeaks: "hunter2"},
		{name: "pkcs11 fragment", uri: "pkcs11:token=a;object=ca#x", part: "fragment"},
		// A PIN before the first ':' used to be quoted, up to that ':', as
		// an unknown scheme.
		{name: "pin before the scheme", uri: "pin-value=hunter2:pkcs11:token=a", part: "scheme", noLeaks: "hunt"},
		{name: "pin as the scheme", uri: "pin-value=s3cr3tpin:x", part: "scheme", noLeaks: "s3cr"},
		{name: "pin in a file URI", uri: "file:///k?pin-value=hunter2%zz", part: "query", noLeaks: "hunt"},
		{name: "pin in a transit query", uri: "vault-transit://t/k?pin-value=hunter2%zz", part: "pin-value", noLeaks: "hunt"},
		{name: "empty pin is no pin", uri: "pkcs11:token=a;object=ca?pin-value=&pin-source=/p", want: "pkcs11:token=a;object=ca?pin-source=/p"},
		{name: "pin with bad escape", uri: "pkcs11:token=a;object=ca?pin-value=hunter2%zz", part: "pin-value", reason: "percent-encoding", noLeaks: "hunt"},

		{name: "transit", uri: "vault-transit://transit/castellan-ca", want: "vault-transit://transit/castellan-ca",
			check: func(t *testing.T, u *URI) {
				if u.Mount != "transit" || u.Key != "castellan-ca" {
					t.Errorf("mount %q key %q", u.Mount, u.Key)
				}
			}},
		{name: "transit nested mount", uri: "vault-transit://secrets/transit/ca?key-version=2", want: "vault-transit://secrets/transit/ca?key-version=2",
			check: func(t *testing.T, u *URI) {
				if u.Mount != "secrets/transit" || u.Key != "ca" || u.KeyVersion != 2 {
					t.Errorf("mount %q key %q version %d", u.Mount, u.Key, u.KeyVersion)
				}
			}},
		{name: "transit no key", uri: "vault-transit://transit", part: "key", reason: "missing"},
		{name: "transit empty key", uri: "vault-transit://transit/", part: "key", reason: "missing"},
		{name: "transit nothing", uri: "vault-transit://", part: "mount", reason: "missing"},
		{name: "transit no slashes", uri: "vault-transit:transit/ca", part: "mount"},
		{name: "transit traversal", uri: "vault-transit://transit/../sys/ca", part: "mount"},
		{name: "transit bad key", uri: "vault-transit://transit/c a", part: "key"},
		{name: "transit empty segment", uri: "vault-transit://a//ca", part: "mount"},
		{name: "transit unknown query", uri: "vault-transit://transit/ca?version=1", part: "version", reason: "unknown query parameter"},
		{name: "transit bad version", uri: "vault-transit://transit/ca?key-version=x", part: "key-version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.uri)
			if tt.part == "" {
				if err != nil {
					t.Fatalf("ParseURI(%q): %v", tt.uri, err)
				}
				if got := u.String(); got != tt.want {
					t.Errorf("String() = %q, want %q", got, tt.want)
				}
				if tt.check != nil {
					tt.check(t, u)
				}
				// The canonical form parses to the same thing.
				if !strings.Contains(tt.want, "REDACTED") {
					u2, err := ParseURI(u.String())
					if err != nil || u2.String() != u.String() {
						t.Errorf("canonical form %q does not round-trip: %v", u.String(), err)
					}
				}
				return
			}
			var ue *URIError
			if !errors.As(err, &ue) {
				t.Fatalf("ParseURI(%q) = %v, %v; want a *URIError", tt.uri, u, err)
			}
			if ue.Part != tt.part {
				t.Errorf("part = %q, want %q (%v)", ue.Part, tt.part, err)
			}
			if !strings.Contains(ue.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", ue.Reason, tt.reason)
			}
			if tt.noLeaks != "" && strings.Contains(err.Error(), tt.noLeaks) {
				t.Errorf("error %q leaks %q", err, tt.noLeaks)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "query", in: "pkcs11:token=a?pin-value=1234&module-path=/x", want: "pkcs11:token=a?pin-value=REDACTED&module-path=/x"},
		{name: "path", in: "pkcs11:token=a;pin-value=1234;object=b", want: "pkcs11:token=a;pin-value=REDACTED;object=b"},
		{name: "case", in: "pkcs11:PIN-VALUE=1234", want: "pkcs11:PIN-VALUE=REDACTED"},
		{name: "none", in: "file:///k.pem", want: "file:///k.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Redact(tt.in); got != tt.want {
				t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzParseURI checks that any input either parses to a URI whose
// canonical form parses again, or fails with a *URIError, and that no PIN
// ever appears in an error or a canonical form.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"file:///k.pem", "file:k", "pkcs11:token=a;object=b?pin-value=secretpin",
		"pkcs11:slot-id=1;id=%00?module-path=/x.so&max-sessions=4", "vault-transit://a/b/c?key-version=1",
		"vault-transit://", "pkcs11:", "pkcs11:;;;?&&", "x:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			var ue *URIError
			if !errors.As(err, &ue) {
				t.Fatalf("ParseURI(%q) error %T is not a *URIError", s, err)
			}
			// The error must not depend on the PIN: the same URI with
			// other PINs fails with the same message, or parses (when
			// only the PIN itself was wrong).
			other := pinValueRE.ReplaceAllStringFunc(s, func(m string) string {
				if len(m) == len("pin-value=") {
					return m
				}
				return m[:len("pin-value=")] + "Q7Z"
			})
			if _, err2 := ParseURI(other); err2 != nil && err2.Error() != err.Error() {
				t.Fatalf("errors depend on the PIN:\n%q: %v\n%q: %v", s, err, other, err2)
			}
			return
		}
		c := u.String()
		if u.Scheme == SchemePKCS11 && u.PKCS11.PINValue != "" && strings.Contains(c, "pin-value="+u.PKCS11.PINValue) && u.PKCS11.PINValue != "REDACTED" {
			t.Fatalf("String() %q leaks the PIN", c)
		}
		if strings.Contains(c, "REDACTED") {
			return
		}
		u2, err := ParseURI(c)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", c, s, err)
		}
		if u2.String() != c {
			t.Fatalf("canonical form %q of %q re-parses as %q", c, s, u2.String())
		}
	})
}
