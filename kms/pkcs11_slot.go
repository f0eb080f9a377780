//go:build cgo && !nopkcs11

package kms

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// findSlot loads module and finds the slot holding the token a names. It
// fails with an error that lists the tokens present when none matches, and
// reports a token whose user PIN is locked or not initialised.
func findSlot(module string, a PKCS11Attributes) (slotInfo, error) {
	p := pkcs11.New(module)
	if p == nil {
		return slotInfo{}, errors.New("the module cannot be loaded (not a PKCS#11 library, or missing dependencies)")
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		var perr pkcs11.Error
		if !errors.As(err, &perr) || perr != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return slotInfo{}, fmt.Errorf("the module does not initialise: %w", err)
		}
		// Another key of this process holds the module open; leave it so.
	} else {
		defer func() { _ = p.Finalize() }() // nothing to do about a module that fails to close
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return slotInfo{}, fmt.Errorf("cannot list slots: %w", err)
	}
	var present []string
	for _, id := range slots {
		ti, err := p.GetTokenInfo(id)
		if err != nil {
			continue
		}
		info := slotInfo{ID: id, Label: ti.Label, Serial: ti.SerialNumber}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			present = append(present, fmt.Sprintf("slot %d (uninitialised token)", id))
		} else {
			present = append(present, info.String())
		}
		match := (a.HasSlotID && uint(a.SlotID) == id) ||
			(a.Token != "" && ti.Label == a.Token) ||
			(a.Serial != "" && ti.SerialNumber == a.Serial)
		if !match {
			continue
		}
		switch {
		case ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0:
			return slotInfo{}, fmt.Errorf("%s: the token is not initialised", info)
		case ti.Flags&pkcs11.CKF_USER_PIN_LOCKED != 0:
			return slotInfo{}, fmt.Errorf("%s: the user PIN is locked (too many wrong PINs); unlock it with the SO PIN", info)
		case ti.Flags&pkcs11.CKF_USER_PIN_INITIALIZED == 0:
			return slotInfo{}, fmt.Errorf("%s: the token's user PIN is not initialised", info)
		}
		return info, nil
	}
	want := "token " + fmt.Sprintf("%q", a.Token)
	switch {
	case a.HasSlotID:
		want = fmt.Sprintf("slot %d", a.SlotID)
	case a.Serial != "":
		want = fmt.Sprintf("token with serial %q", a.Serial)
	}
	if len(present) == 0 {
		return slotInfo{}, fmt.Errorf("no %s: the module has no slot with a token present", want)
	}
	return slotInfo{}, fmt.Errorf("no %s; tokens present: %s", want, strings.Join(present, ", "))
}
