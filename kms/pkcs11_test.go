//go:build cgo && !nopkcs11

package kms

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// softHSMToken creates a SoftHSM2 token labelled label with user PIN 1234
// in a fresh token directory, and points SOFTHSM2_CONF at it. It fails
// when SoftHSM2 is not installed (scripts/tools.sh, "make tools", installs
// it), or skips if CASTELLAN_ALLOW_SKIP is set, as integration/harness's
// SkipUnlessAllowed does.
func softHSMToken(t testing.TB, label string) {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err != nil || fileMissing(softHSMModule) {
		msg := fmt.Sprintf("SoftHSM2 is not installed (%s); run scripts/tools.sh (make tools)", softHSMModule)
		if allow, _ := strconv.ParseBool(os.Getenv("CASTELLAN_ALLOW_SKIP")); allow {
			t.Skip(msg + " (skipped: CASTELLAN_ALLOW_SKIP is set)")
		}
		t.Fatal(msg + "; set CASTELLAN_ALLOW_SKIP=1 to skip the tests that need it instead")
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
}

func fileMissing(p string) bool {
	_, err := os.Stat(p)
	return err != nil
}

func TestPKCS11Key(t *testing.T) {
	softHSMToken(t, "castellan")
	ctx := context.Background()
	uri := "pkcs11:token=castellan;object=ca?module-path=" + softHSMModule + "&pin-value=1234"

	key, created, err := OpenOrCreate(ctx, uri, ECDSAP256, Config{})
	if err != nil || !created {
		t.Fatalf("OpenOrCreate: created=%v err=%v", created, err)
	}
	signAndVerify(t, key)
	pub := key.Public()
	if strings.Contains(key.URI(), "1234") {
		t.Fatalf("URI() %q shows the PIN", key.URI())
	}
	if err := key.Close(); err != nil {
		t.Fatal(err)
	}

	// The key stays in the token and cannot leave it.
	checkNonExtractable(t, "castellan", "ca")

	// A new process (a new session pool) finds the same key, by label and
	// by the id derived from it; Create refuses to replace it.
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := Open(ctx, "pkcs11:token=castellan;object=ca?module-path="+softHSMModule+"&pin-source="+pinFile, Config{})
	if err != nil {
		t.Fatalf("Open with pin-source: %v", err)
	}
	if !publicEqual(pub, again.Public()) {
		t.Fatal("reopened key differs")
	}
	signAndVerify(t, again)
	again.Close()
	sum := sha256.Sum256([]byte("ca"))
	byID, err := Open(ctx, fmt.Sprintf("pkcs11:token=castellan;id=%s?module-path=%s&pin-value=1234", pctEncode(sum[:8]), softHSMModule), Config{})
	if err != nil {
		t.Fatalf("Open by id: %v", err)
	}
	byID.Close()
	if _, err := Create(ctx, uri, ECDSAP256, Config{}); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("Create over an existing key: %v, want ErrKeyExists", err)
	}

	// RSA keys sign PKCS#1 v1.5 with the hash the CA gives.
	rsaKey, err := Create(ctx, "pkcs11:token=castellan;object=rsa?module-path="+softHSMModule+"&pin-value=1234", RSA2048, Config{})
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, rsaKey)
	rsaKey.Close()
}

func TestPKCS11Errors(t *testing.T) {
	softHSMToken(t, "castellan")
	ctx := context.Background()
	tests := []struct {
		name string
		uri  string
		want []string
		is   error
	}{
		{
			name: "wrong PIN",
			uri:  "pkcs11:token=castellan;object=ca?module-path=" + softHSMModule + "&pin-value=9999",
			want: []string{"module " + softHSMModule, "slot ", `token "castellan"`, "the PIN is incorrect"},
		},
		{
			name: "absent module",
			uri:  "pkcs11:token=castellan;object=ca?module-path=/usr/lib/no-such-hsm.so&pin-value=1234",
			want: []string{"module /usr/lib/no-such-hsm.so", "cannot be loaded", "no such file"},
		},
		{
			name: "not a module",
			uri:  "pkcs11:token=castellan;object=ca?module-path=/etc/hostname&pin-value=1234",
			want: []string{"module /etc/hostname", "cannot be loaded"},
		},
		{
			name: "absent token",
			uri:  "pkcs11:token=other;object=ca?module-path=" + softHSMModule + "&pin-value=1234",
			want: []string{"module " + softHSMModule, `no token "other"`, `tokens present: slot `, `(token "castellan"`},
		},
		{
			name: "absent slot",
			uri:  "pkcs11:slot-id=4242;object=ca?module-path=" + softHSMModule + "&pin-value=1234",
			want: []string{"no slot 4242"},
		},
		{
			name: "missing key",
			uri:  "pkcs11:token=castellan;object=nothing?module-path=" + softHSMModule + "&pin-value=1234",
			want: []string{"no private key", "slot "},
			is:   ErrKeyNotFound,
		},
		{
			name: "missing pin file",
			uri:  "pkcs11:token=castellan;object=ca?module-path=" + softHSMModule + "&pin-source=/nonexistent/pin",
			want: []string{"pin-source", "cannot read the PIN"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := Open(ctx, tt.uri, Config{})
			if err == nil {
				k.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("%s", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "pin-value=1234") || strings.Contains(err.Error(), "9999") {
				t.Errorf("error %q shows the PIN", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

// checkNonExtractable reads the attributes of the private key labelled
// object straight from the token.
func checkNonExtractable(t *testing.T, token, object string) {
	t.Helper()
	p := pkcs11.New(softHSMModule)
	if p == nil {
		t.Fatal("cannot load SoftHSM2")
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var slot uint
	found := false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == token {
			slot, found = s, true
		}
	}
	if !found {
		t.Fatalf("no token %q", token)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_USER, "1234"); err != nil {
		t.Fatal(err)
	}
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, object),
	}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(sh, 2)
	p.FindObjectsFinal(sh)
	if err != nil || len(objs) != 1 {
		t.Fatalf("found %d private keys labelled %q: %v", len(objs), object, err)
	}
	attrs, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint]byte{pkcs11.CKA_EXTRACTABLE: 0, pkcs11.CKA_SENSITIVE: 1, pkcs11.CKA_TOKEN: 1}
	for _, a := range attrs {
		if len(a.Value) != 1 || a.Value[0] != want[a.Type] {
			t.Errorf("attribute 0x%x = %v, want %d", a.Type, a.Value, want[a.Type])
		}
	}
	if _, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
		t.Error("the private value of the key could be read")
	}
}

func pctEncode(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "%%%02X", c)
	}
	return s.String()
}
