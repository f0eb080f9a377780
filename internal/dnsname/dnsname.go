// Package dnsname checks RFC 1123 names: the labels and subdomains that
// Kubernetes names namespaces, service accounts, pods and nodes with, and
// the host names a certificate's DNS SANs hold. IsLabel and IsSubdomain
// apply the rules of k8s.io/apimachinery's validation package without its
// regular expressions, which would be most of the cost of checking a token.
package dnsname

import (
	"errors"
	"fmt"
	"strings"
)

// IsLabel reports whether s is an RFC 1123 label: 1 to 63 lowercase
// letters, digits and '-', starting and ending with a letter or digit, as
// a Kubernetes namespace is.
func IsLabel(s string) bool { return isName(s, 63, false) }

// IsSubdomain reports whether s is an RFC 1123 subdomain: at most 253
// characters of labels joined by '.', as the names of Kubernetes service
// accounts, pods and nodes are. As in Kubernetes, a label of a subdomain
// is not limited to 63 characters.
func IsSubdomain(s string) bool { return isName(s, 253, true) }

func isName(s string, limit int, dots bool) bool {
	if s == "" || len(s) > limit {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' || (dots && c == '.'):
			// Neither may start or end a label.
			if i == 0 || i == len(s)-1 || s[i-1] == '.' || s[i+1] == '.' {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// CheckHost returns nil when name is a host name (RFC 1123) a certificate
// may carry: at most 253 characters of lowercase labels of at most 63,
// no wildcard and no trailing dot. Otherwise it says what is wrong.
func CheckHost(name string) error {
	switch {
	case name == "":
		return errors.New("empty DNS name")
	case len(name) > 253:
		return fmt.Errorf("DNS name of %d characters is over 253", len(name))
	case strings.Contains(name, "*"):
		return fmt.Errorf("DNS name %q is a wildcard; name each host", name)
	case strings.HasSuffix(name, "."):
		return fmt.Errorf("DNS name %q ends with a dot; write it without", name)
	}
	for l := range strings.SplitSeq(name, ".") {
		switch {
		case l == "":
			return fmt.Errorf("DNS name %q has an empty label", name)
		case len(l) > 63:
			return fmt.Errorf("DNS name %q: label of %d characters is over 63", name, len(l))
		case !IsLabel(l):
			return fmt.Errorf("DNS name %q: label %q is not valid; use lowercase letters, digits and '-', starting and ending with a letter or digit", name, l)
		}
	}
	return nil
}
