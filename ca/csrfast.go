package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// csrKey is what issuance needs of a CSR that passed validation: its
// public key, verbatim.
type csrKey struct {
	spki []byte // DER SubjectPublicKeyInfo
	rsa  bool
}

// The exact encodings the fast path accepts; anything else takes the
// crypto/x509 path.
var (
	// AlgorithmIdentifier of an ECDSA key on P-256.
	p256KeyAlgorithm = []byte{0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	// AlgorithmIdentifier of ecdsa-with-SHA256, with no parameters.
	ecdsaSHA256Algorithm = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	// OID of PKCS #9 extensionRequest.
	oidExtensionRequestDER = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e}
	// OID of subjectAltName.
	oidSANDER = []byte{0x55, 0x1d, 0x11}
)

// parseCSRFast is the issuance path's parser for the CSR every workload
// sends: a P-256 key, an ecdsa-with-SHA256 signature, a subject of common
// string attributes at most, and an extensionRequest holding at most a
// subjectAltName with one URI, equal to id. It reads only those fields
// (cryptobyte, no reflection) and verifies the signature.
//
// handled is false when the CSR is anything else, or when it would be
// refused for any reason but its signature: the caller must then take the
// crypto/x509 path (ParseCSR and ValidateCSR), which decides and words every
// other refusal. Whenever handled is true, that path reaches the same
// outcome (a test and a fuzz target hold the two together).
func parseCSRFast(pemBytes []byte, id spiffeid.ID) (key csrKey, handled bool, err error) {
	if len(pemBytes) == 0 || len(pemBytes) > MaxCSRSize {
		return csrKey{}, false, nil
	}
	der, ok := decodeCSRPEM(pemBytes)
	if !ok {
		return csrKey{}, false, nil
	}
	in := cryptobyte.String(der)
	var csr, tbsRaw, sigAlg cryptobyte.String
	var sig cryptobyte.String
	var unused uint8
	if !in.ReadASN1(&csr, cbasn1.SEQUENCE) || !in.Empty() ||
		!csr.ReadASN1Element(&tbsRaw, cbasn1.SEQUENCE) ||
		!csr.ReadASN1Element(&sigAlg, cbasn1.SEQUENCE) || !bytes.Equal(sigAlg, ecdsaSHA256Algorithm) ||
		!csr.ReadASN1(&sig, cbasn1.BIT_STRING) || !csr.Empty() ||
		!sig.ReadUint8(&unused) || unused != 0 {
		return csrKey{}, false, nil
	}
	tbs := tbsRaw
	var info, version, subject, spki, attrs cryptobyte.String
	if !tbs.ReadASN1(&info, cbasn1.SEQUENCE) ||
		!info.ReadASN1(&version, cbasn1.INTEGER) || !bytes.Equal(version, []byte{0}) ||
		!info.ReadASN1(&subject, cbasn1.SEQUENCE) || !plainSubject(subject) ||
		!info.ReadASN1Element(&spki, cbasn1.SEQUENCE) ||
		!info.ReadASN1(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) || !info.Empty() ||
		!onlyID(attrs, id) {
		return csrKey{}, false, nil
	}
	pub, ok := parseP256SPKI(spki)
	if !ok {
		return csrKey{}, false, nil
	}
	digest := sha256.Sum256(tbsRaw)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		// The words crypto/x509 would use.
		return csrKey{}, true, reject(ReasonBadSignature, "CSR signature does not verify: x509: ECDSA verification failure")
	}
	return csrKey{spki: spki}, true, nil
}

// parseP256SPKI returns the P-256 key of a SubjectPublicKeyInfo.
func parseP256SPKI(spki cryptobyte.String) (*ecdsa.PublicKey, bool) {
	var seq, alg cryptobyte.String
	var point cryptobyte.String
	var unused uint8
	if !spki.ReadASN1(&seq, cbasn1.SEQUENCE) ||
		!seq.ReadASN1Element(&alg, cbasn1.SEQUENCE) || !bytes.Equal(alg, p256KeyAlgorithm) ||
		!seq.ReadASN1(&point, cbasn1.BIT_STRING) || !seq.Empty() ||
		!point.ReadUint8(&unused) || unused != 0 {
		return nil, false
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	return pub, err == nil
}

// plainSubject reports whether a Name's RDNs hold only common attributes
// (CN, O, OU, C) with PrintableString or UTF-8 values.
func plainSubject(rdns cryptobyte.String) bool {
	for !rdns.Empty() {
		var set cryptobyte.String
		if !rdns.ReadASN1(&set, cbasn1.SET) || set.Empty() {
			return false
		}
		for !set.Empty() {
			var atv, oid, value cryptobyte.String
			var tag cbasn1.Tag
			if !set.ReadASN1(&atv, cbasn1.SEQUENCE) ||
				!atv.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) ||
				!atv.ReadAnyASN1(&value, &tag) || !atv.Empty() {
				return false
			}
			if len(oid) != 3 || oid[0] != 0x55 || oid[1] != 0x04 {
				return false
			}
			switch oid[2] {
			case 3, 6, 10, 11: // CN, C, O, OU
			default:
				return false
			}
			switch tag {
			case cbasn1.PrintableString:
				if !strictPrintable(value) {
					return false
				}
			case cbasn1.UTF8String:
				if !utf8.Valid(value) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// strictPrintable reports whether s holds only PrintableString characters
// (X.680), without the '*' and '&' some parsers also allow.
func strictPrintable(s []byte) bool {
	for _, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == ' ', c == '\'', c == '(', c == ')', c == '+', c == ',', c == '-', c == '.', c == '/', c == ':', c == '=', c == '?':
		default:
			return false
		}
	}
	return true
}

// onlyID reports whether a CSR's attributes are nothing, or one
// extensionRequest with nothing but a subjectAltName holding id as its
// only name (or no name).
func onlyID(attrs cryptobyte.String, id spiffeid.ID) bool {
	if attrs.Empty() {
		return true
	}
	var attr, oid, values, exts cryptobyte.String
	if !attrs.ReadASN1(&attr, cbasn1.SEQUENCE) || !attrs.Empty() ||
		!attr.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) || !bytes.Equal(oid, oidExtensionRequestDER) ||
		!attr.ReadASN1(&values, cbasn1.SET) || !attr.Empty() ||
		!values.ReadASN1(&exts, cbasn1.SEQUENCE) || !values.Empty() {
		return false
	}
	seenSAN := false
	for !exts.Empty() {
		var ext, extID, value cryptobyte.String
		if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) ||
			!ext.ReadASN1(&extID, cbasn1.OBJECT_IDENTIFIER) || !bytes.Equal(extID, oidSANDER) || seenSAN {
			return false
		}
		seenSAN = true
		if ext.PeekASN1Tag(cbasn1.BOOLEAN) {
			var critical cryptobyte.String
			if !ext.ReadASN1(&critical, cbasn1.BOOLEAN) || !bytes.Equal(critical, []byte{0xff}) {
				return false
			}
		}
		if !ext.ReadASN1(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
			return false
		}
		var names cryptobyte.String
		if !value.ReadASN1(&names, cbasn1.SEQUENCE) || !value.Empty() {
			return false
		}
		if names.Empty() {
			continue
		}
		var uri cryptobyte.String
		if !names.ReadASN1(&uri, cbasn1.Tag(6).ContextSpecific()) || !names.Empty() || string(uri) != id.String() {
			return false
		}
	}
	return true
}

const (
	csrPEMBegin = "-----BEGIN CERTIFICATE REQUEST-----"
	csrPEMEnd   = "-----END CERTIFICATE REQUEST-----"
)

// decodeCSRPEM decodes a CSR in the PEM layout encoders write: the BEGIN
// line first, lines of base64 ending in LF or CRLF, the END line, then
// whitespace at most (the base64 decoder ignores CR and LF wherever they
// are, as encoding/pem does). It is false for any other layout (text before the
// block, headers, blanks or spaces inside, bad base64), which
// encoding/pem then judges; on what it accepts, the two agree (a fuzz
// target holds them together).
func decodeCSRPEM(in []byte) ([]byte, bool) {
	body, ok := bytes.CutPrefix(in, []byte(csrPEMBegin))
	if !ok {
		return nil, false
	}
	if body, ok = bytes.CutPrefix(body, []byte("\n")); !ok {
		if body, ok = bytes.CutPrefix(body, []byte("\r\n")); !ok {
			return nil, false
		}
	}
	end := bytes.Index(body, []byte(csrPEMEnd))
	if end < 0 {
		return nil, false
	}
	// After the END line: nothing, or its line end and whitespace.
	if after := body[end+len(csrPEMEnd):]; len(after) > 0 {
		after, ok = bytes.CutPrefix(after, []byte("\n"))
		if !ok {
			if after, ok = bytes.CutPrefix(after, []byte("\r\n")); !ok {
				return nil, false
			}
		}
		if len(bytes.TrimSpace(after)) != 0 {
			return nil, false
		}
	}
	body = body[:end]
	// The last base64 line ends too. The decoder skips the line ends
	// (LF, CR) and refuses any other byte outside the alphabet.
	if !bytes.HasSuffix(body, []byte("\n")) {
		return nil, false
	}
	der := make([]byte, base64.StdEncoding.DecodedLen(len(body)))
	n, err := base64.StdEncoding.Decode(der, body)
	if err != nil || n == 0 {
		return nil, false
	}
	return der[:n:n], true
}
