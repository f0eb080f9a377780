package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/internal/vault"
)

// Defaults of the Transit signer.
const (
	defaultTransitMaxBatch = 32
	// transitMaxInFlight is the number of transit/sign calls one key has
	// in flight at once. Signatures asked for meanwhile wait and go in
	// the next batch.
	transitMaxInFlight = 8
	// transitSignTimeout bounds one transit/sign call. crypto.Signer has
	// no context, so the timeout is fixed.
	transitSignTimeout = 30 * time.Second
)

// transitStore keeps keys in a Vault Transit engine.
type transitStore struct {
	client   *vault.Client
	maxBatch int
}

func (s *transitStore) keyPath(u *URI) string { return u.Mount + "/keys/" + u.Key }

func (s *transitStore) open(ctx context.Context, u *URI) (crypto.Signer, error) {
	sec, err := s.client.Read(ctx, s.keyPath(u))
	if err != nil {
		return nil, fmt.Errorf("kms: %s: %w", u, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("kms: %s: no such Transit key at %s: %w", u, s.keyPath(u), ErrKeyNotFound)
	}
	info, err := parseTransitKey(sec.Data)
	if err != nil {
		return nil, fmt.Errorf("kms: %s: %w", u, err)
	}
	if info.exportable {
		return nil, fmt.Errorf("kms: %s: the Transit key is exportable; a CA key must not be (create it with exportable=false)", u)
	}
	version := u.KeyVersion
	if version == 0 {
		version = info.latest
	}
	pemKey, ok := info.publicKeys[version]
	if !ok {
		return nil, fmt.Errorf("kms: %s: the Transit key has no version %d (versions %d to %d)", u, version, info.minVersion, info.latest)
	}
	pub, err := parsePublicKeyPEM(pemKey)
	if err != nil {
		return nil, fmt.Errorf("kms: %s: public key of version %d: %w", u, version, err)
	}
	maxBatch := s.maxBatch
	if maxBatch == 0 {
		maxBatch = defaultTransitMaxBatch
	}
	return &transitSigner{
		client:   s.client,
		path:     u.Mount + "/sign/" + u.Key,
		name:     u.String(),
		pub:      pub,
		version:  version,
		maxBatch: maxBatch,
		queues:   map[signParams][]*signCall{},
	}, nil
}

func (s *transitStore) create(ctx context.Context, u *URI, alg Algorithm) (crypto.Signer, error) {
	sec, err := s.client.Read(ctx, s.keyPath(u))
	if err != nil {
		return nil, fmt.Errorf("kms: %s: %w", u, err)
	}
	if sec != nil {
		return nil, fmt.Errorf("kms: %s: %w", u, ErrKeyExists)
	}
	_, err = s.client.Write(ctx, s.keyPath(u), map[string]any{
		"type":                   string(alg),
		"exportable":             false,
		"allow_plaintext_backup": false,
	})
	if err != nil {
		return nil, fmt.Errorf("kms: %s: could not create the Transit key: %w", u, err)
	}
	return s.open(ctx, u)
}

func (s *transitStore) Close() error { return nil }

// transitKeyInfo is what kms needs from transit/keys/<key>.
type transitKeyInfo struct {
	keyType            string
	exportable         bool
	latest, minVersion int
	publicKeys         map[int]string
}

func parseTransitKey(data map[string]any) (*transitKeyInfo, error) {
	info := &transitKeyInfo{publicKeys: map[int]string{}}
	info.keyType, _ = data["type"].(string)
	switch info.keyType {
	case "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096":
	default:
		return nil, fmt.Errorf("the Transit key has type %q, which cannot sign certificates (want ecdsa-p256, ecdsa-p384, ecdsa-p521 or rsa-*)", info.keyType)
	}
	info.exportable, _ = data["exportable"].(bool)
	var err error
	if info.latest, err = jsonInt(data["latest_version"]); err != nil {
		return nil, fmt.Errorf("latest_version: %w", err)
	}
	info.minVersion, _ = jsonInt(data["min_decryption_version"])
	keys, ok := data["keys"].(map[string]any)
	if !ok {
		return nil, errors.New("the answer lists no key versions")
	}
	for v, raw := range keys {
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		if m, ok := raw.(map[string]any); ok {
			if p, ok := m["public_key"].(string); ok && p != "" {
				info.publicKeys[n] = p
			}
		}
	}
	return info, nil
}

func jsonInt(v any) (int, error) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err
	case float64:
		return int(n), nil
	case int:
		return n, nil
	}
	return 0, fmt.Errorf("not a number: %v", v)
}

func parsePublicKeyPEM(s string) (crypto.PublicKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	switch pub.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
		return pub, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// signParams are the request parameters that every input of one batch
// shares.
type signParams struct {
	hash    string // sha2-256, ...
	sigAlg  string // pkcs1v15 or pss (RSA)
	salt    string // PSS salt length
	marshal string // asn1 (ECDSA)
}

type signCall struct {
	input string // base64 digest
	done  chan signResult
}

type signResult struct {
	sig []byte
	err error
}

// transitSigner signs with a Transit key, pinned to one key version so
// that every signature matches the certificate's public key. Concurrent
// signatures are batched: while transitMaxInFlight calls are in flight,
// new inputs queue and leave together in one batch_input request.
type transitSigner struct {
	client   *vault.Client
	path     string
	name     string
	pub      crypto.PublicKey
	version  int
	maxBatch int

	mu       sync.Mutex
	inFlight int
	queues   map[signParams][]*signCall
	order    []signParams // params with queued calls, oldest first
}

func (s *transitSigner) Public() crypto.PublicKey { return s.pub }

// Sign signs digest, waiting at most transitSignTimeout.
func (s *transitSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.SignContext(context.Background(), r, digest, opts)
}

// SignContext signs digest, giving up when ctx ends or after
// transitSignTimeout, whichever comes first.
func (s *transitSigner) SignContext(ctx context.Context, _ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	p, err := s.params(digest, opts)
	if err != nil {
		return nil, fmt.Errorf("kms: %s: %w", s.name, err)
	}
	call := &signCall{input: base64.StdEncoding.EncodeToString(digest), done: make(chan signResult, 1)}
	if s.maxBatch <= 1 {
		ctx, cancel := context.WithTimeout(ctx, transitSignTimeout)
		defer cancel()
		s.send(ctx, p, []*signCall{call})
	} else {
		s.enqueue(p, call)
	}
	var r signResult
	select {
	case r = <-call.done:
	case <-ctx.Done():
		// A batch already sent completes without this caller; done is
		// buffered, so its result is dropped.
		return nil, fmt.Errorf("kms: %s: %w", s.name, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("kms: %s: %w", s.name, r.err)
	}
	return r.sig, nil
}

// params maps the signer options to Transit's parameters.
func (s *transitSigner) params(digest []byte, opts crypto.SignerOpts) (signParams, error) {
	if opts == nil {
		return signParams{}, errors.New("no signer options: the digest's hash must be given")
	}
	h := opts.HashFunc()
	var p signParams
	switch h {
	case crypto.SHA224:
		p.hash = "sha2-224"
	case crypto.SHA256:
		p.hash = "sha2-256"
	case crypto.SHA384:
		p.hash = "sha2-384"
	case crypto.SHA512:
		p.hash = "sha2-512"
	default:
		return signParams{}, fmt.Errorf("hash %v is not supported by Transit prehashed signing", h)
	}
	if len(digest) != h.Size() {
		return signParams{}, fmt.Errorf("digest is %d bytes, want %d for %v", len(digest), h.Size(), h)
	}
	switch s.pub.(type) {
	case *ecdsa.PublicKey:
		p.marshal = "asn1"
	case *rsa.PublicKey:
		p.sigAlg = "pkcs1v15"
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			p.sigAlg = "pss"
			switch pss.SaltLength {
			case rsa.PSSSaltLengthAuto:
				p.salt = "auto"
			case rsa.PSSSaltLengthEqualsHash:
				p.salt = "hash"
			default:
				p.salt = strconv.Itoa(pss.SaltLength)
			}
		}
	}
	return p, nil
}

func (s *transitSigner) enqueue(p signParams, call *signCall) {
	s.mu.Lock()
	if len(s.queues[p]) == 0 {
		s.order = append(s.order, p)
	}
	s.queues[p] = append(s.queues[p], call)
	start := s.inFlight < transitMaxInFlight
	if start {
		s.inFlight++
	}
	s.mu.Unlock()
	if start {
		go s.flush()
	}
}

// flush sends queued calls, a batch at a time, until the queue is empty.
func (s *transitSigner) flush() {
	for {
		s.mu.Lock()
		if len(s.order) == 0 {
			s.inFlight--
			s.mu.Unlock()
			return
		}
		p := s.order[0]
		q := s.queues[p]
		n := min(len(q), s.maxBatch)
		batch := q[:n:n]
		if rest := q[n:]; len(rest) > 0 {
			s.queues[p] = rest
		} else {
			delete(s.queues, p)
			s.order = s.order[1:]
		}
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), transitSignTimeout)
		s.send(ctx, p, batch)
		cancel()
	}
}

// send makes one transit/sign call for calls and delivers each result.
func (s *transitSigner) send(ctx context.Context, p signParams, calls []*signCall) {
	data := map[string]any{
		"prehashed":      true,
		"hash_algorithm": p.hash,
		"key_version":    s.version,
	}
	if p.marshal != "" {
		data["marshaling_algorithm"] = p.marshal
	}
	if p.sigAlg != "" {
		data["signature_algorithm"] = p.sigAlg
	}
	if p.salt != "" {
		data["salt_length"] = p.salt
	}
	if len(calls) == 1 {
		data["input"] = calls[0].input
	} else {
		items := make([]map[string]string, len(calls))
		for i, c := range calls {
			items[i] = map[string]string{"input": c.input}
		}
		data["batch_input"] = items
	}
	sec, err := s.client.Write(ctx, s.path, data)
	fail := func(err error) {
		for _, c := range calls {
			c.done <- signResult{err: err}
		}
	}
	switch {
	case err != nil:
		fail(err)
		return
	case sec == nil || sec.Data == nil:
		fail(errors.New("transit/sign gave an empty answer"))
		return
	}
	if len(calls) == 1 {
		sig, err := s.decodeSignature(sec.Data["signature"])
		calls[0].done <- signResult{sig: sig, err: err}
		return
	}
	results, ok := sec.Data["batch_results"].([]any)
	if !ok || len(results) != len(calls) {
		fail(fmt.Errorf("transit/sign answered %d batch results for %d inputs", len(results), len(calls)))
		return
	}
	for i, c := range calls {
		item, _ := results[i].(map[string]any)
		if msg, _ := item["error"].(string); msg != "" {
			c.done <- signResult{err: fmt.Errorf("transit/sign: %s", msg)}
			continue
		}
		sig, err := s.decodeSignature(item["signature"])
		c.done <- signResult{sig: sig, err: err}
	}
}

// decodeSignature decodes Transit's "vault:v<N>:<base64>" and checks that
// the pinned version signed.
func (s *transitSigner) decodeSignature(v any) ([]byte, error) {
	str, _ := v.(string)
	prefix := "vault:v" + strconv.Itoa(s.version) + ":"
	b64, ok := strings.CutPrefix(str, prefix)
	if !ok {
		return nil, fmt.Errorf("transit/sign answered a signature not of the form %s<base64>", prefix)
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("transit/sign answered a signature that is not base64: %w", err)
	}
	return sig, nil
}
