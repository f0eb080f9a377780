package envoyrbac

import (
	"fmt"
	"regexp"
	"strings"
)

// Envoy's URI template syntax (envoy.path.match.uri_template):
//
//	template  = "/" segment *( "/" segment ) [ "/" ] [ suffix ]
//	segment   = literal / "*" / "**" / "{" name [ "=" match ] "}"
//
// "*" matches one path segment, "**" zero or more characters including
// '/', and must be the last operator. A literal is made of RFC 3986 pchar
// characters without '*'.

const (
	templateLiteral = `a-zA-Z0-9\-._~%!$&'()+,;:@=`
	pathGlob        = `[` + templateLiteral + `]+`
	textGlob        = `[` + templateLiteral + `/]*`
)

var (
	literalRE  = regexp.MustCompile(`^[` + templateLiteral + `]+$`)
	variableRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]*$`)
)

// maxTemplateVariables is Envoy's limit on variables in one template.
const maxTemplateVariables = 5

// TemplateRegex compiles an Envoy URI template into the regular expression
// Envoy matches paths with (a full match). It rejects templates Envoy would
// reject.
func TemplateRegex(tmpl string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("envoyrbac: invalid URI template %q: %s", tmpl, fmt.Sprintf(format, args...))
	}
	if !strings.HasPrefix(tmpl, "/") {
		return bad("must start with '/'")
	}
	for _, c := range tmpl {
		if c <= ' ' || c > '~' {
			return bad("only printable ASCII is allowed")
		}
	}
	var (
		parts    []string
		seenText bool
		vars     = map[string]bool{}
		rest     = tmpl[1:]
		suffix   string
	)
	glob := func(op string) (string, error) {
		if seenText {
			return "", fmt.Errorf("an operator follows **")
		}
		if op == "**" {
			seenText = true
			return textGlob, nil
		}
		return pathGlob, nil
	}
	for rest != "" {
		var seg string
		switch {
		case strings.HasPrefix(rest, "**"):
			g, err := glob("**")
			if err != nil {
				return bad("%v", err)
			}
			seg, rest = g, rest[2:]
		case strings.HasPrefix(rest, "*"):
			g, err := glob("*")
			if err != nil {
				return bad("%v", err)
			}
			seg, rest = g, rest[1:]
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return bad("unmatched '{'")
			}
			name, match, hasMatch := strings.Cut(rest[1:end], "=")
			rest = rest[end+1:]
			if !variableRE.MatchString(name) || len(name) > 16 {
				return bad("invalid variable name %q", name)
			}
			if vars[name] {
				return bad("repeated variable %q", name)
			}
			vars[name] = true
			if len(vars) > maxTemplateVariables {
				return bad("more than %d variables", maxTemplateVariables)
			}
			var sub []string
			if !hasMatch {
				g, err := glob("*")
				if err != nil {
					return bad("%v", err)
				}
				sub = []string{g}
			} else {
				if match == "" {
					return bad("empty variable match")
				}
				for _, m := range strings.Split(match, "/") {
					switch {
					case m == "**" || m == "*":
						g, err := glob(m)
						if err != nil {
							return bad("%v", err)
						}
						sub = append(sub, g)
					case literalRE.MatchString(m):
						sub = append(sub, regexp.QuoteMeta(m))
					default:
						return bad("invalid variable match %q", match)
					}
				}
			}
			seg = "(" + strings.Join(sub, "/") + ")"
		default:
			end := strings.IndexByte(rest, '/')
			if end < 0 {
				end = len(rest)
			}
			lit := rest[:end]
			if !literalRE.MatchString(lit) {
				return bad("invalid literal %q", lit)
			}
			seg, rest = regexp.QuoteMeta(lit), rest[end:]
		}
		parts = append(parts, seg)
		switch {
		case rest == "":
		case rest == "/":
			parts = append(parts, "") // a trailing '/'
			rest = ""
		case rest[0] == '/':
			rest = rest[1:]
		default:
			// Text right after an operator or variable is a suffix, which
			// must end the template.
			if strings.Contains(rest, "/") || !literalRE.MatchString(rest) {
				return bad("invalid suffix %q", rest)
			}
			suffix, rest = regexp.QuoteMeta(rest), ""
		}
	}
	return "/" + strings.Join(parts, "/") + suffix, nil
}
