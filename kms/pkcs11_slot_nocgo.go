//go:build !cgo || nopkcs11

package kms

import "errors"

// findSlot fails: PKCS#11 needs cgo.
func findSlot(string, PKCS11Attributes) (slotInfo, error) {
	return slotInfo{}, errors.New("this build of Castellan has no PKCS#11 support (built without cgo)")
}
