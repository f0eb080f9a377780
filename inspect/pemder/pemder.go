// Package pemder parses certificates and private keys from the encodings
// they travel in: PEM, DER, and base64 of either (as kubectl prints a Secret
// value). It accepts hostile input: every error says what was wrong and
// where, and nothing panics.
package pemder

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

var pemStart = []byte("-----BEGIN")

// ParseCertificates parses certificates from data, which holds either PEM
// (any number of CERTIFICATE blocks; other blocks such as private keys are
// skipped) or DER (one certificate or several concatenated). Data that is
// neither but is the base64 encoding of one of them (as kubectl prints a
// Secret value) is decoded first. The certificates are returned in the order
// they appear. An error says which block, on which line, is bad.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertificates(data)
	if err == nil {
		return certs, nil
	}
	if !bytes.Contains(data, pemStart) {
		if decoded, ok := decodeBase64(data); ok {
			if certs, err2 := parseCertificates(decoded); err2 == nil {
				return certs, nil
			}
		}
	}
	return nil, fmt.Errorf("pemder: %w", err)
}

func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("no data")
	}
	if !bytes.Contains(data, pemStart) {
		certs, err := x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("input is not PEM, and not DER certificates: %w", err)
		}
		if len(certs) == 0 {
			return nil, errors.New("no certificate in DER input")
		}
		return certs, nil
	}
	var (
		certs []*x509.Certificate
		other []string
		lines lineCounter
	)
	for n, rest := 1, data; ; n++ {
		start := bytes.Index(rest, pemStart)
		if start < 0 {
			break
		}
		line := lines.at(data, len(data)-len(rest)+start)
		block, next := decodeOne(rest[start:])
		if block == nil {
			return nil, fmt.Errorf("PEM block %d at line %d is malformed (bad base64 or no END line)", n, line)
		}
		rest = next
		switch block.Type {
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d (CERTIFICATE) at line %d: %w", n, line, err)
			}
			certs = append(certs, cert)
		default:
			other = append(other, block.Type)
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no CERTIFICATE PEM block (found %s)", describeTypes(other))
	}
	return certs, nil
}

// ParseKey parses a private key in PEM (PKCS #8, PKCS #1 or SEC 1) or DER
// and returns its public half. The private key itself is dropped before
// ParseKey returns. In PEM, the first private key block is used and other
// blocks are skipped. It returns ErrNoKey when PEM data holds no private key
// block.
func ParseKey(data []byte) (crypto.PublicKey, error) {
	pub, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("pemder: %w", err)
	}
	return pub, nil
}

// parseKey is ParseKey with unprefixed errors.
func parseKey(data []byte) (crypto.PublicKey, error) {
	if !bytes.Contains(data, pemStart) {
		if decoded, ok := decodeBase64(data); ok && bytes.Contains(decoded, pemStart) {
			data = decoded
		} else {
			return parseKeyDER(data, "")
		}
	}
	var lines lineCounter
	for n, rest := 1, data; ; n++ {
		start := bytes.Index(rest, pemStart)
		if start < 0 {
			return nil, ErrNoKey
		}
		line := lines.at(data, len(data)-len(rest)+start)
		block, next := decodeOne(rest[start:])
		if block == nil {
			return nil, fmt.Errorf("PEM block %d at line %d is malformed (bad base64 or no END line)", n, line)
		}
		rest = next
		switch {
		case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "":
			return nil, fmt.Errorf("PEM block %d at line %d is an encrypted private key; decrypt it first", n, line)
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			pub, err := parseKeyDER(block.Bytes, block.Type)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d (%s) at line %d: %w", n, block.Type, line, err)
			}
			return pub, nil
		}
	}
}

// ErrNoKey is wrapped in the error ParseKey returns when PEM data holds no
// private key.
var ErrNoKey = errors.New("no private key PEM block")

func parseKeyDER(der []byte, pemType string) (crypto.PublicKey, error) {
	var (
		key any
		err error
	)
	switch pemType {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(der)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(der)
	default:
		key, err = x509.ParsePKCS8PrivateKey(der)
		if err != nil && pemType == "" {
			if k, err1 := x509.ParsePKCS1PrivateKey(der); err1 == nil {
				key, err = k, nil
			} else if k, err2 := x509.ParseECPrivateKey(der); err2 == nil {
				key, err = k, nil
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	switch k := key.(type) {
	case crypto.Signer:
		return k.Public(), nil
	case *ecdh.PrivateKey:
		return k.PublicKey(), nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

// decodeBase64 decodes data as standard base64, ignoring surrounding and
// embedded whitespace.
func decodeBase64(data []byte) ([]byte, bool) {
	compact := bytes.Join(bytes.Fields(data), nil)
	if len(compact) == 0 {
		return nil, false
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(compact)))
	n, err := base64.StdEncoding.Decode(out, compact)
	if err != nil || n == 0 {
		return nil, false
	}
	return out[:n], true
}

// decodeOne decodes the PEM block that data starts with. Unlike pem.Decode
// it never skips a malformed block to return a later one: it returns nil.
func decodeOne(data []byte) (*pem.Block, []byte) {
	end := len(data)
	if i := bytes.Index(data[len(pemStart):], pemStart); i >= 0 {
		end = len(pemStart) + i
	}
	block, remain := pem.Decode(data[:end])
	if block == nil {
		return nil, nil
	}
	return block, data[end-len(remain):]
}

// lineCounter turns byte offsets into 1-based line numbers. Offsets must
// not decrease from one call to the next: each call counts only the
// newlines since the previous one, so numbering every block of an input is
// linear in its size, not quadratic.
type lineCounter struct {
	offset int // bytes already counted
	line   int // newlines in data[:offset]
}

// at returns the 1-based line number of offset in data.
func (c *lineCounter) at(data []byte, offset int) int {
	c.line += bytes.Count(data[c.offset:offset], []byte("\n"))
	c.offset = offset
	return c.line + 1
}

// maxTypesListed bounds how many distinct block types an error lists.
const maxTypesListed = 8

// describeTypes lists the distinct block types seen, in order of first
// appearance, with a count when a type repeats, and at most maxTypesListed
// of them, so that an error about a large input stays short.
func describeTypes(types []string) string {
	if len(types) == 0 {
		return "no PEM block"
	}
	counts := make(map[string]int)
	var order []string
	for _, t := range types {
		if counts[t] == 0 {
			order = append(order, t)
		}
		counts[t]++
	}
	parts := make([]string, 0, min(len(order), maxTypesListed)+1)
	for i, t := range order {
		if i == maxTypesListed {
			parts = append(parts, fmt.Sprintf("and %d other types", len(order)-maxTypesListed))
			break
		}
		if counts[t] > 1 {
			t = fmt.Sprintf("%s ×%d", t, counts[t])
		}
		parts = append(parts, t)
	}
	return strings.Join(parts, ", ")
}
