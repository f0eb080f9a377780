package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-mesh/castellan/internal/vault"
)

// fakeTransit is a stand-in for Vault's Transit engine, for unit tests of
// the request encoding and batching. The integration tests use a real Vault.
type fakeTransit struct {
	t   *testing.T
	key crypto.Signer
	typ string

	mu         sync.Mutex
	batchSizes []int
	params     []map[string]any
	exportable bool
	// hold, when set, keeps each sign request waiting until it is closed;
	// entered receives one value per request held.
	hold, entered chan struct{}
}

func (f *fakeTransit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Vault-Token") != "root" {
		http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/transit/keys/ca":
		der, _ := x509.MarshalPKIXPublicKey(f.key.Public())
		pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		writeJSON(w, map[string]any{"data": map[string]any{
			"type": f.typ, "exportable": f.exportable, "latest_version": 2, "min_decryption_version": 1,
			"keys": map[string]any{"1": map[string]any{"public_key": "old"}, "2": map[string]any{"public_key": pub}},
		}})
	case r.Method == http.MethodGet:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"errors":[]}`))
	case r.URL.Path == "/v1/transit/sign/ca":
		if f.hold != nil {
			f.entered <- struct{}{}
			select {
			case <-f.hold:
			case <-r.Context().Done():
				return
			}
		}
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		f.mu.Lock()
		f.params = append(f.params, req)
		f.mu.Unlock()
		if req["prehashed"] != true || req["key_version"] != float64(2) {
			http.Error(w, `{"errors":["want prehashed input and key_version 2"]}`, 400)
			return
		}
		var inputs []string
		if b, ok := req["batch_input"].([]any); ok {
			for _, it := range b {
				inputs = append(inputs, it.(map[string]any)["input"].(string))
			}
		} else {
			inputs = []string{req["input"].(string)}
		}
		f.mu.Lock()
		f.batchSizes = append(f.batchSizes, len(inputs))
		f.mu.Unlock()
		var results []map[string]any
		for _, in := range inputs {
			digest, _ := base64.StdEncoding.DecodeString(in)
			if in == base64.StdEncoding.EncodeToString(make([]byte, 32)) {
				results = append(results, map[string]any{"error": "refused an all-zero digest"})
				continue
			}
			var opts crypto.SignerOpts = crypto.SHA256
			if req["hash_algorithm"] == "sha2-384" {
				opts = crypto.SHA384
			}
			if req["signature_algorithm"] == "pss" {
				opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: opts.HashFunc()}
			}
			sig, err := f.key.Sign(rand.Reader, digest, opts)
			if err != nil {
				results = append(results, map[string]any{"error": err.Error()})
				continue
			}
			results = append(results, map[string]any{"signature": "vault:v2:" + base64.StdEncoding.EncodeToString(sig), "key_version": 2})
		}
		if _, batch := req["batch_input"]; batch {
			writeJSON(w, map[string]any{"data": map[string]any{"batch_results": results}})
			return
		}
		if e, ok := results[0]["error"]; ok {
			w.WriteHeader(400)
			writeJSON(w, map[string]any{"errors": []any{e}})
			return
		}
		writeJSON(w, map[string]any{"data": results[0]})
	default:
		http.Error(w, `{"errors":["unexpected request"]}`, 400)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func newFakeTransit(t *testing.T, key crypto.Signer, typ string) (*fakeTransit, *vault.Client) {
	f := &fakeTransit{t: t, key: key, typ: typ}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := vault.New(vault.Config{Address: srv.URL, Auth: vault.TokenAuth{Token: "root"}})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func TestTransitSign(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name     string
		key      crypto.Signer
		typ      string
		opts     crypto.SignerOpts
		wantSent map[string]any
	}{
		{name: "ecdsa", key: ecKey, typ: "ecdsa-p256", opts: crypto.SHA256,
			wantSent: map[string]any{"hash_algorithm": "sha2-256", "marshaling_algorithm": "asn1"}},
		{name: "rsa pkcs1v15", key: rsaKey, typ: "rsa-2048", opts: crypto.SHA256,
			wantSent: map[string]any{"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"}},
		{name: "rsa pss", key: rsaKey, typ: "rsa-2048", opts: &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256},
			wantSent: map[string]any{"hash_algorithm": "sha2-256", "signature_algorithm": "pss", "salt_length": "hash"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, client := newFakeTransit(t, tt.key, tt.typ)
			key, err := Open(context.Background(), "vault-transit://transit/ca", Config{Vault: client})
			if err != nil {
				t.Fatal(err)
			}
			if !publicEqual(key.Public(), tt.key.Public()) {
				t.Fatal("public key differs from the latest version's")
			}
			digest := sha256.Sum256([]byte("tbs"))
			sig, err := key.Sign(rand.Reader, digest[:], tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := tt.key.Public().(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					t.Fatal("signature does not verify")
				}
			case *rsa.PublicKey:
				var err error
				if pss, ok := tt.opts.(*rsa.PSSOptions); ok {
					err = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, pss)
				} else {
					err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
				}
				if err != nil {
					t.Fatalf("signature does not verify: %v", err)
				}
			}
			sent := f.params[0]
			for k, v := range tt.wantSent {
				if sent[k] != v {
					t.Errorf("sent %s = %v, want %v", k, sent[k], v)
				}
			}
			if sent["input"] != base64.StdEncoding.EncodeToString(digest[:]) {
				t.Errorf("sent input %v, want the base64 digest", sent["input"])
			}
		})
	}
}

func TestTransitBatching(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f, client := newFakeTransit(t, ecKey, "ecdsa-p256")
	key, err := Open(context.Background(), "vault-transit://transit/ca", Config{Vault: client, TransitMaxBatch: 16})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			digest := sha256.Sum256([]byte(fmt.Sprint(i)))
			if i == 7 {
				digest = [32]byte{} // the fake refuses this one only
			}
			sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
			switch {
			case i == 7 && err == nil:
				errs <- errors.New("the refused input got a signature")
			case i == 7:
			case err != nil:
				errs <- err
			case !ecdsa.VerifyASN1(&ecKey.PublicKey, digest[:], sig):
				errs <- fmt.Errorf("signature %d does not verify", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total, biggest := 0, 0
	for _, s := range f.batchSizes {
		total += s
		biggest = max(biggest, s)
	}
	if total != n || biggest > 16 {
		t.Errorf("batches %v: total %d (want %d), biggest %d (want <= 16)", f.batchSizes, total, n, biggest)
	}
	t.Logf("%d signatures in %d calls", n, len(f.batchSizes))
}

func TestTransitErrors(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f, client := newFakeTransit(t, ecKey, "ecdsa-p256")
	ctx := context.Background()

	if _, err := Open(ctx, "vault-transit://transit/none", Config{Vault: client}); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("Open of a missing key: %v, want ErrKeyNotFound", err)
	}
	if _, err := Open(ctx, "vault-transit://transit/ca?key-version=9", Config{Vault: client}); err == nil || !strings.Contains(err.Error(), "no version 9") {
		t.Errorf("Open of a missing version: %v", err)
	}
	if _, err := Open(ctx, "vault-transit://transit/ca", Config{}); err == nil || !strings.Contains(err.Error(), "needs a Vault client") {
		t.Errorf("Open without a client: %v", err)
	}
	f.exportable = true
	if _, err := Open(ctx, "vault-transit://transit/ca", Config{Vault: client}); err == nil || !strings.Contains(err.Error(), "exportable") {
		t.Errorf("Open of an exportable key: %v", err)
	}
	f.exportable = false
	f.typ = "aes256-gcm96"
	if _, err := Open(ctx, "vault-transit://transit/ca", Config{Vault: client}); err == nil || !strings.Contains(err.Error(), "cannot sign") {
		t.Errorf("Open of an encryption key: %v", err)
	}
	f.typ = "ecdsa-p256"
	key, err := Open(ctx, "vault-transit://transit/ca", Config{Vault: client, TransitMaxBatch: 1})
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
		want   string
	}{
		{name: "no hash", digest: digest[:], opts: crypto.Hash(0), want: "not supported"},
		{name: "short digest", digest: digest[:16], opts: crypto.SHA256, want: "digest is 16 bytes"},
		{name: "refused", digest: make([]byte, 32), opts: crypto.SHA256, want: "all-zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := key.Sign(rand.Reader, tc.digest, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Sign: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestTransitSignContext: a signature asked with a context gives up when
// the context ends while Transit has not answered, batched or not, with
// the context's error; the signer still works after.
func TestTransitSignContext(t *testing.T) {
	for _, batch := range []int{1, 16} {
		t.Run(fmt.Sprintf("batch %d", batch), func(t *testing.T) {
			ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			f, client := newFakeTransit(t, ecKey, "ecdsa-p256")
			key, err := Open(context.Background(), "vault-transit://transit/ca", Config{Vault: client, TransitMaxBatch: batch})
			if err != nil {
				t.Fatal(err)
			}
			f.hold, f.entered = make(chan struct{}), make(chan struct{}, 16)
			ctx, cancel := context.WithCancel(context.Background())
			digest := sha256.Sum256([]byte("tbs"))
			errc := make(chan error, 1)
			go func() {
				_, err := key.SignContext(ctx, rand.Reader, digest[:], crypto.SHA256)
				errc <- err
			}()
			<-f.entered // the request is at Transit
			cancel()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Fatalf("SignContext after cancel = %v, want context.Canceled", err)
			}
			close(f.hold)
			if _, err := key.SignContext(context.Background(), rand.Reader, digest[:], crypto.SHA256); err != nil {
				t.Fatalf("a later signature: %v", err)
			}
		})
	}
}
