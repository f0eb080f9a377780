package kms

import (
	"encoding/hex"
	"fmt"
	"maps"
	"net/url"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Scheme names a key store in a key URI.
type Scheme string

// The key stores kms supports.
const (
	// SchemeFile is a PEM private key in a file: file:///var/lib/castellan/ca-key.pem.
	SchemeFile Scheme = "file"
	// SchemePKCS11 is a key in a PKCS#11 token (RFC 7512):
	// pkcs11:token=castellan;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/castellan/pin.
	SchemePKCS11 Scheme = "pkcs11"
	// SchemeVaultTransit is a key in a Vault Transit engine:
	// vault-transit://<mount>/<key>, where the mount may have several segments.
	SchemeVaultTransit Scheme = "vault-transit"
)

// URI is a parsed key URI. Only the fields of its Scheme are set.
type URI struct {
	// Scheme selects the key store.
	Scheme Scheme

	// Path is the absolute path of a file key.
	Path string

	// PKCS11 holds the attributes of a pkcs11: URI.
	PKCS11 PKCS11Attributes

	// Mount and Key name a Vault Transit key: the key Key under the transit
	// engine mounted at Mount.
	Mount, Key string
	// KeyVersion pins a Transit key version (key-version=N in the query).
	// Zero means the latest version at the time the key is opened.
	KeyVersion int
}

// PKCS11Attributes are the parts of a pkcs11: URI that kms uses. One of
// Token, Serial or SlotID names the token; Object (CKA_LABEL) and ID
// (CKA_ID) name the key.
type PKCS11Attributes struct {
	// Token is the token label (path attribute "token").
	Token string
	// Serial is the token serial number (path attribute "serial").
	Serial string
	// SlotID is the slot number (path attribute "slot-id"); HasSlotID
	// says whether it was given.
	SlotID    int
	HasSlotID bool
	// Object is the key's label (path attribute "object").
	Object string
	// ID is the key's CKA_ID (path attribute "id", percent-encoded bytes).
	ID []byte
	// ModulePath is the PKCS#11 module to load (query attribute
	// "module-path"). Empty means p11-kit's proxy module.
	ModulePath string
	// PINValue is the user PIN (query attribute "pin-value"). It is never
	// printed.
	PINValue string
	// PINSource is a file holding the user PIN (query attribute
	// "pin-source").
	PINSource string
	// MaxSessions caps the sessions opened on the token (query attribute
	// "max-sessions"). Zero means the library's default.
	MaxSessions int
}

// URIError reports what is wrong with a key URI and in which part.
type URIError struct {
	// URI is the URI as given, with any PIN replaced by REDACTED.
	URI string
	// Part names the wrong part: "scheme", "path", a PKCS#11 attribute
	// such as "slot-id", "mount", "key" or a query parameter.
	Part string
	// Reason says what is wrong with it.
	Reason string
}

// Error returns the redacted URI, the part and the reason.
func (e *URIError) Error() string {
	return fmt.Sprintf("kms: key URI %q: %s: %s", e.URI, e.Part, e.Reason)
}

var pinValueRE = regexp.MustCompile(`(?i)(pin-value=)[^&;#]*`)

// Redact returns rawURI with the value of any pin-value attribute replaced
// by REDACTED, fit for logs and error messages.
func Redact(rawURI string) string {
	return pinValueRE.ReplaceAllString(rawURI, "${1}REDACTED")
}

// pinValues returns the non-empty values of every pin-value attribute in
// rawURI, longest first, so that a PIN containing another is removed whole.
func pinValues(rawURI string) []string {
	var pins []string
	for _, m := range pinValueRE.FindAllString(rawURI, -1) {
		if v := m[len("pin-value="):]; v != "" {
			pins = append(pins, v)
			if u, err := url.QueryUnescape(v); err == nil && u != v && u != "" {
				pins = append(pins, u)
			}
		}
	}
	sort.Slice(pins, func(i, j int) bool { return len(pins[i]) > len(pins[j]) })
	return pins
}

// ParseURI parses a key URI. A URI that does not parse gets a *URIError
// naming the part that is wrong. No part of a PIN ever appears in the
// error: the URI is first parsed with every pin-value replaced, so a
// message that quotes a fragment of the URI (a scheme, a parser's error)
// quotes the placeholder; only what depends on the PIN itself (its
// percent-encoding) is found in the second parse of the URI as given.
func ParseURI(rawURI string) (*URI, error) {
	masked := maskPINs(rawURI)
	if _, err := parseURI(masked, masked); err != nil {
		return nil, err
	}
	return parseURI(rawURI, Redact(rawURI))
}

// maskPINs replaces every non-empty pin-value with REDACTED. Unlike Redact
// it leaves an empty value empty, so that the masked URI parses exactly as
// the URI as given does, PIN aside.
func maskPINs(rawURI string) string {
	return pinValueRE.ReplaceAllStringFunc(rawURI, func(m string) string {
		if len(m) == len("pin-value=") {
			return m
		}
		return m[:len("pin-value=")] + "REDACTED"
	})
}

// parseURI parses rawURI; shown is the URI that errors carry.
func parseURI(rawURI, shown string) (*URI, error) {
	pins := pinValues(rawURI)
	bad := func(part, format string, args ...any) error {
		// Defence in depth: every PIN value is also removed from the reason,
		// wherever it stands.
		reason := fmt.Sprintf(format, args...)
		for _, pin := range pins {
			reason = strings.ReplaceAll(reason, pin, "REDACTED")
		}
		return &URIError{URI: shown, Part: part, Reason: reason}
	}
	if rawURI == "" {
		return nil, bad("scheme", "empty key URI (want file:///path, pkcs11:... or vault-transit://mount/key)")
	}
	i := strings.Index(rawURI, ":")
	if i <= 0 {
		return nil, bad("scheme", "missing scheme (want file:///path, pkcs11:... or vault-transit://mount/key)")
	}
	switch Scheme(strings.ToLower(rawURI[:i])) {
	case SchemeFile:
		return parseFileURI(rawURI, bad)
	case SchemePKCS11:
		return parsePKCS11URI(rawURI, rawURI[i+1:], bad)
	case SchemeVaultTransit:
		return parseTransitURI(rawURI, bad)
	}
	return nil, bad("scheme", "unknown scheme %q (want file, pkcs11 or vault-transit)", rawURI[:i])
}

type badFunc func(part, format string, args ...any) error

func parseFileURI(rawURI string, bad badFunc) (*URI, error) {
	u, err := url.Parse(rawURI)
	if err != nil {
		return nil, bad("path", "%v", unwrapURLError(err))
	}
	switch {
	case u.Opaque != "":
		return nil, bad("path", "%q is not absolute (want file:///absolute/path)", u.Opaque)
	case u.Host != "" && u.Host != "localhost":
		return nil, bad("host", "%q: only local files are supported (want file:///absolute/path)", u.Host)
	case u.User != nil:
		return nil, bad("host", "user information is not allowed")
	case u.RawQuery != "" || u.ForceQuery:
		return nil, bad("query", "file URIs take no query parameters")
	case u.Fragment != "":
		return nil, bad("fragment", "file URIs take no fragment")
	case u.Path == "" || !strings.HasPrefix(u.Path, "/"):
		return nil, bad("path", "missing absolute path (want file:///absolute/path)")
	}
	clean := path.Clean(u.Path)
	if strings.HasSuffix(u.Path, "/") || clean == "/" {
		return nil, bad("path", "%q names a directory, not a key file", u.Path)
	}
	return &URI{Scheme: SchemeFile, Path: clean}, nil
}

// The attributes a pkcs11: URI may carry.
var (
	pkcs11PathAttrs  = []string{"token", "serial", "slot-id", "object", "id", "type"}
	pkcs11QueryAttrs = []string{"module-path", "pin-value", "pin-source", "max-sessions"}
)

func parsePKCS11URI(rawURI, rest string, bad badFunc) (*URI, error) {
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		return nil, bad("fragment", "pkcs11 URIs take no fragment")
	}
	pathPart, queryPart, _ := strings.Cut(rest, "?")
	attrs := PKCS11Attributes{}
	seen := map[string]bool{}
	parse := func(part, sep string, allowed []string, set func(name, value string) error) error {
		if part == "" {
			return nil
		}
		for _, kv := range strings.Split(part, sep) {
			if kv == "" {
				continue
			}
			name, value, ok := strings.Cut(kv, "=")
			if !ok {
				return bad(name, "attribute has no value (want %s=<value>)", name)
			}
			name = strings.ToLower(name)
			if !contains(allowed, name) {
				where := "path"
				if sep == "&" {
					where = "query"
				}
				if contains(pkcs11PathAttrs, name) || contains(pkcs11QueryAttrs, name) {
					return bad(name, "belongs in the %s part of the URI, not the %s part", otherPart(where), where)
				}
				return bad(name, "unknown or unsupported %s attribute (want one of %s)", where, strings.Join(allowed, ", "))
			}
			if seen[name] {
				return bad(name, "given more than once")
			}
			seen[name] = true
			v, err := url.PathUnescape(value)
			if err != nil {
				return bad(name, "bad percent-encoding")
			}
			if err := set(name, v); err != nil {
				return err
			}
		}
		return nil
	}
	err := parse(pathPart, ";", pkcs11PathAttrs, func(name, v string) error {
		switch name {
		case "token":
			attrs.Token = v
		case "serial":
			attrs.Serial = v
		case "slot-id":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return bad(name, "%q is not a slot number", v)
			}
			attrs.SlotID, attrs.HasSlotID = n, true
		case "object":
			attrs.Object = v
		case "id":
			attrs.ID = []byte(v)
		case "type":
			if v != "private" {
				return bad(name, "%q: a signing key URI names the private key (type=private)", v)
			}
		}
		if v == "" {
			return bad(name, "empty value")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = parse(queryPart, "&", pkcs11QueryAttrs, func(name, v string) error {
		switch name {
		case "module-path":
			if !strings.HasPrefix(v, "/") && strings.Contains(v, "/") {
				return bad(name, "%q: give an absolute path or a bare library name", v)
			}
			attrs.ModulePath = v
		case "pin-value":
			attrs.PINValue = v
		case "pin-source":
			if !strings.HasPrefix(v, "/") {
				return bad(name, "%q is not an absolute file path", v)
			}
			attrs.PINSource = v
		case "max-sessions":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return bad(name, "%q is not a positive number", v)
			}
			attrs.MaxSessions = n
		}
		if v == "" && name != "pin-value" {
			return bad(name, "empty value")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	tokens := 0
	for _, b := range []bool{attrs.Token != "", attrs.Serial != "", attrs.HasSlotID} {
		if b {
			tokens++
		}
	}
	switch {
	case tokens == 0:
		return nil, bad("token", "no token named (give one of token=<label>, serial=<serial> or slot-id=<n>)")
	case tokens > 1:
		return nil, bad("token", "token, serial and slot-id are exclusive; give one")
	case attrs.Object == "" && len(attrs.ID) == 0:
		return nil, bad("object", "no key named (give object=<label> and/or id=<bytes>)")
	case attrs.PINValue != "" && attrs.PINSource != "":
		return nil, bad("pin-value", "pin-value and pin-source are exclusive; give one")
	}
	return &URI{Scheme: SchemePKCS11, PKCS11: attrs}, nil
}

func otherPart(p string) string {
	if p == "path" {
		return "query"
	}
	return "path"
}

var transitNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func parseTransitURI(rawURI string, bad badFunc) (*URI, error) {
	rest, ok := strings.CutPrefix(rawURI[len(SchemeVaultTransit)+1:], "//")
	if !ok {
		return nil, bad("mount", "want vault-transit://<mount>/<key>")
	}
	if strings.Contains(rest, "#") {
		return nil, bad("fragment", "vault-transit URIs take no fragment")
	}
	p, query, _ := strings.Cut(rest, "?")
	segs := strings.Split(p, "/")
	if len(segs) < 2 {
		if p == "" {
			return nil, bad("mount", "missing (want vault-transit://<mount>/<key>)")
		}
		return nil, bad("key", "missing (want vault-transit://<mount>/<key>)")
	}
	key := segs[len(segs)-1]
	mount := segs[:len(segs)-1]
	for _, s := range mount {
		if !transitNameRE.MatchString(s) {
			return nil, bad("mount", "segment %q is empty or has characters other than letters, digits, '_', '.' and '-'", s)
		}
	}
	if key == "" {
		return nil, bad("key", "missing (want vault-transit://<mount>/<key>)")
	}
	if !transitNameRE.MatchString(key) {
		return nil, bad("key", "%q has characters other than letters, digits, '_', '.' and '-'", key)
	}
	u := &URI{Scheme: SchemeVaultTransit, Mount: strings.Join(mount, "/"), Key: key}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return nil, bad("query", "%v", err)
		}
		// In name order, so that the same URI always gets the same error.
		for _, name := range slices.Sorted(maps.Keys(q)) {
			vs := q[name]
			if name != "key-version" {
				return nil, bad(name, "unknown query parameter (want key-version)")
			}
			if len(vs) != 1 {
				return nil, bad(name, "given more than once")
			}
			n, err := strconv.Atoi(vs[0])
			if err != nil || n <= 0 {
				return nil, bad(name, "%q is not a positive version number", vs[0])
			}
			u.KeyVersion = n
		}
	}
	return u, nil
}

// String returns u in canonical form. A PIN value is replaced by REDACTED,
// so the result is fit for logs.
func (u *URI) String() string {
	switch u.Scheme {
	case SchemeFile:
		return (&url.URL{Scheme: "file", Path: u.Path}).String()
	case SchemePKCS11:
		a := u.PKCS11
		var p []string
		add := func(name, v string) {
			if v != "" {
				p = append(p, name+"="+escapePKCS11(v))
			}
		}
		add("token", a.Token)
		add("serial", a.Serial)
		if a.HasSlotID {
			p = append(p, "slot-id="+strconv.Itoa(a.SlotID))
		}
		add("object", a.Object)
		add("id", string(a.ID))
		s := "pkcs11:" + strings.Join(p, ";")
		var q []string
		if a.ModulePath != "" {
			q = append(q, "module-path="+escapePKCS11(a.ModulePath))
		}
		if a.PINSource != "" {
			q = append(q, "pin-source="+escapePKCS11(a.PINSource))
		}
		if a.PINValue != "" {
			q = append(q, "pin-value=REDACTED")
		}
		if a.MaxSessions > 0 {
			q = append(q, "max-sessions="+strconv.Itoa(a.MaxSessions))
		}
		if len(q) > 0 {
			s += "?" + strings.Join(q, "&")
		}
		return s
	case SchemeVaultTransit:
		s := "vault-transit://" + u.Mount + "/" + u.Key
		if u.KeyVersion > 0 {
			s += "?key-version=" + strconv.Itoa(u.KeyVersion)
		}
		return s
	}
	return string(u.Scheme) + ":"
}

// escapePKCS11 percent-encodes every byte outside RFC 7512's unreserved
// set (plus '/' and ':', which are safe in values).
func escapePKCS11(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/', c == ':':
			b.WriteByte(c)
		default:
			b.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{c})))
		}
	}
	return b.String()
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
