package kms

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"go.step.sm/crypto/kms/apiv1"
	steppkcs11 "go.step.sm/crypto/kms/pkcs11"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// defaultPKCS11Module is loaded when a pkcs11 URI names no module-path.
const defaultPKCS11Module = "p11-kit-proxy.so"

// pkcs11Store keeps keys in a PKCS#11 token, through
// go.step.sm/crypto/kms/pkcs11. Keys it creates are generated inside the
// token with CKA_SENSITIVE set and CKA_EXTRACTABLE cleared.
type pkcs11Store struct {
	kms    *steppkcs11.PKCS11
	module string
	slot   slotInfo
	pin    string
}

// slotInfo describes the slot that holds the token a URI names.
type slotInfo struct {
	ID     uint
	Label  string
	Serial string
}

func (s slotInfo) String() string {
	return fmt.Sprintf("slot %d (token %q, serial %q)", s.ID, s.Label, s.Serial)
}

func newPKCS11Store(ctx context.Context, u *URI) (*pkcs11Store, error) {
	a := u.PKCS11
	module := a.ModulePath
	if module == "" {
		module = defaultPKCS11Module
	}
	if strings.HasPrefix(module, "/") {
		if _, err := os.Stat(module); err != nil {
			return nil, fmt.Errorf("kms: %s: PKCS#11 module %s cannot be loaded: %w", u, module, err)
		}
	}
	pin, err := readPIN(u)
	if err != nil {
		return nil, err
	}
	// Find the slot first, so that every later error can name it, and a
	// locked or uninitialised token is reported before any login.
	slot, err := findSlot(module, a)
	if err != nil {
		return nil, fmt.Errorf("kms: %s: PKCS#11 module %s: %w", u, module, err)
	}
	q := url.Values{}
	q.Set("module-path", module)
	q.Set("slot-id", strconv.FormatUint(uint64(slot.ID), 10))
	if a.MaxSessions > 0 {
		q.Set("max-sessions", strconv.Itoa(a.MaxSessions))
	}
	// The PIN goes in Options, never in a URI that an error could quote.
	cfgURI := "pkcs11:" + strings.ReplaceAll(q.Encode(), "&", ";")
	k, err := steppkcs11.New(ctx, apiv1.Options{Type: apiv1.PKCS11, URI: cfgURI, Pin: pin})
	if err != nil {
		return nil, fmt.Errorf("kms: %s: PKCS#11 module %s, %s: %s: %w", u, module, slot, pkcs11Reason(err), scrub(err, pin))
	}
	return &pkcs11Store{kms: k, module: module, slot: slot, pin: pin}, nil
}

// maxPINSize bounds the pin-source file; PKCS#11 PINs are far shorter.
const maxPINSize = 4096

// readPIN returns the PIN of u, reading pin-source if given.
func readPIN(u *URI) (string, error) {
	a := u.PKCS11
	if a.PINSource == "" {
		return a.PINValue, nil
	}
	b, err := smallfile.Read(a.PINSource, maxPINSize)
	if err != nil {
		return "", &URIError{URI: u.String(), Part: "pin-source", Reason: fmt.Sprintf("cannot read the PIN: %v", err)}
	}
	pin := strings.TrimRight(string(b), "\r\n")
	if pin == "" {
		return "", &URIError{URI: u.String(), Part: "pin-source", Reason: fmt.Sprintf("%s is empty", a.PINSource)}
	}
	return pin, nil
}

// pkcs11Reason explains the PKCS#11 return value in err.
func pkcs11Reason(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "CKR_PIN_INCORRECT"):
		return "login failed: the PIN is incorrect"
	case strings.Contains(msg, "CKR_PIN_LOCKED"):
		return "login failed: the user PIN is locked"
	case strings.Contains(msg, "CKR_PIN_EXPIRED"):
		return "login failed: the user PIN has expired"
	case strings.Contains(msg, "CKR_PIN_LEN_RANGE"):
		return "login failed: the PIN has the wrong length"
	case strings.Contains(msg, "CKR_USER_PIN_NOT_INITIALIZED"):
		return "login failed: the token's user PIN is not initialised"
	case strings.Contains(msg, "CKR_USER_TYPE_INVALID"), strings.Contains(msg, "CKR_USER_NOT_LOGGED_IN"):
		return "login failed"
	case strings.Contains(msg, "CKR_TOKEN_NOT_PRESENT"), strings.Contains(msg, "CKR_DEVICE_REMOVED"):
		return "the token is not present"
	case strings.Contains(msg, "CKR_DEVICE_ERROR"):
		return "the device reports an error"
	case strings.Contains(msg, "CKR_SESSION_COUNT"):
		return "the token has no free session"
	}
	return "cannot open the token"
}

// scrub removes pin from err's text, in case a library quotes it.
func scrub(err error, pin string) error {
	if pin == "" || !strings.Contains(err.Error(), pin) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), pin, "REDACTED"))
}

// keyName is the URI go.step.sm's pkcs11 KMS uses to find the key.
func keyName(a PKCS11Attributes, id []byte) string {
	q := url.Values{}
	if len(id) > 0 {
		// Hex, which the library decodes exactly.
		q.Set("id", hex.EncodeToString(id))
	}
	if a.Object != "" {
		q.Set("object", a.Object)
	}
	return "pkcs11:" + strings.ReplaceAll(q.Encode(), "&", ";")
}

func (s *pkcs11Store) where(u *URI) string {
	return fmt.Sprintf("%s: PKCS#11 module %s, %s", u, s.module, s.slot)
}

func (s *pkcs11Store) open(_ context.Context, u *URI) (crypto.Signer, error) {
	signer, err := s.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyName(u.PKCS11, u.PKCS11.ID)})
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return nil, fmt.Errorf("kms: %s: no private key with this object/id: %w", s.where(u), ErrKeyNotFound)
		}
		return nil, fmt.Errorf("kms: %s: %s: %w", s.where(u), pkcs11Reason(err), scrub(err, s.pin))
	}
	return signer, nil
}

func (s *pkcs11Store) create(_ context.Context, u *URI, alg Algorithm) (crypto.Signer, error) {
	a := u.PKCS11
	if a.Object == "" {
		return nil, &URIError{URI: u.String(), Part: "object", Reason: "creating a key needs a label (object=<label>)"}
	}
	id := a.ID
	if len(id) == 0 {
		// A stable CKA_ID derived from the label, so that tools that look
		// keys up by id find this one.
		sum := sha256.Sum256([]byte(a.Object))
		id = sum[:8]
	}
	req := &apiv1.CreateKeyRequest{Name: keyName(a, id), Extractable: false}
	switch alg {
	case ECDSAP256:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	case ECDSAP384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case RSA2048, RSA3072, RSA4096:
		req.SignatureAlgorithm = apiv1.SHA256WithRSA
		req.Bits, _ = strconv.Atoi(strings.TrimPrefix(string(alg), "rsa-"))
	default:
		return nil, fmt.Errorf("kms: unknown key algorithm %q", alg)
	}
	resp, err := s.kms.CreateKey(req)
	if err != nil {
		var exists apiv1.AlreadyExistsError
		if errors.As(err, &exists) {
			return nil, fmt.Errorf("kms: %s: %w", s.where(u), ErrKeyExists)
		}
		return nil, fmt.Errorf("kms: %s: could not generate the key in the token: %s: %w", s.where(u), pkcs11Reason(err), scrub(err, s.pin))
	}
	signer, err := s.kms.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		return nil, fmt.Errorf("kms: %s: %w", s.where(u), scrub(err, s.pin))
	}
	return signer, nil
}

func (s *pkcs11Store) Close() error {
	if err := s.kms.Close(); err != nil {
		return fmt.Errorf("kms: PKCS#11 module %s: %w", s.module, err)
	}
	return nil
}
