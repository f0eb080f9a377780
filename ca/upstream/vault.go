package upstream

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/vault"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Issuer is one of the CAs of an upstream that holds several, such as a
// Vault PKI mount since Vault 1.11.
type Issuer struct {
	// ID is the upstream's identifier of the issuer; Name its name, if any.
	ID, Name string
	// Cert is the issuer's certificate.
	Cert *x509.Certificate
	// Chain holds the certificates above Cert, ending with its root;
	// empty when Cert is a root.
	Chain []*x509.Certificate
}

// Root returns the root the issuer chains to.
func (i *Issuer) Root() *x509.Certificate {
	if len(i.Chain) > 0 {
		return i.Chain[len(i.Chain)-1]
	}
	return i.Cert
}

// String names the issuer for logs and errors.
func (i *Issuer) String() string {
	if i.Name != "" {
		return fmt.Sprintf("%s (%s)", i.Name, i.ID)
	}
	return i.ID
}

// RootRequest describes a new upstream root.
type RootRequest struct {
	// Name is the new issuer's name. Required.
	Name string
	// CommonName is the root certificate's subject common name. Required.
	CommonName string
	// TrustDomain, if set, is the root's organization and URI SAN.
	TrustDomain spiffeid.TrustDomain
	// TTL is the root's lifetime. Required.
	TTL time.Duration
	// KeyType and KeyBits select the root's key as Vault names them
	// ("ec" 256/384, "rsa" 2048/3072/4096). Default: ec 256.
	KeyType string
	KeyBits int
}

// IssuerManager is an upstream with several issuers in one place, such as
// a Vault PKI mount, whose roots can be rotated (see Backend).
type IssuerManager interface {
	Authority
	// LookupIssuer reads the issuer ref (a name or ID).
	LookupIssuer(ctx context.Context, ref string) (*Issuer, error)
	// NewRoot creates a root issuer that signs nothing until named.
	NewRoot(ctx context.Context, req RootRequest) (*Issuer, error)
	// WithIssuer returns the Authority that signs with the issuer ref.
	WithIssuer(ref string) Authority
}

// VaultPKI is Vault's PKI secrets engine as the upstream CA. It signs the
// intermediate at <Mount>/root/sign-intermediate, or at
// <Mount>/issuer/<Issuer>/sign-intermediate when an issuer is named.
type VaultPKI struct {
	// Client calls Vault. Required.
	Client *vault.Client
	// Mount is the PKI engine's mount path. Default: "pki".
	Mount string
	// Issuer names the issuer that signs (a name or ID). Empty means the
	// mount's default issuer.
	Issuer string
}

func (v *VaultPKI) mount() string {
	if m := strings.Trim(v.Mount, "/"); m != "" {
		return m
	}
	return "pki"
}

func (v *VaultPKI) path() string {
	if v.Issuer != "" {
		return v.mount() + "/issuer/" + v.Issuer + "/sign-intermediate"
	}
	return v.mount() + "/root/sign-intermediate"
}

// String names the endpoint, for logs.
func (v *VaultPKI) String() string {
	return "vault " + v.Client.Address() + " " + v.path()
}

// WithIssuer returns a copy of v that signs with the issuer ref (a name or
// ID) of the same mount.
func (v *VaultPKI) WithIssuer(ref string) Authority {
	c := *v
	c.Issuer = ref
	return &c
}

// LookupIssuer reads the issuer ref (a name or ID) of the mount.
func (v *VaultPKI) LookupIssuer(ctx context.Context, ref string) (*Issuer, error) {
	if ref == "" || strings.ContainsAny(ref, "/?#") {
		return nil, fmt.Errorf("upstream: issuer reference %q is not a Vault issuer name or ID", ref)
	}
	path := v.mount() + "/issuer/" + ref + "/json"
	sec, err := v.Client.Read(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("upstream: %s: no issuer %q in mount %s", path, ref, v.mount())
	}
	return parseIssuer(path, sec.Data)
}

// NewRoot has Vault create a root issuer with a new key in the mount,
// through <mount>/root/rotate/internal: the mount's default issuer does
// not change, so nothing signs with the new root until it is named.
func (v *VaultPKI) NewRoot(ctx context.Context, req RootRequest) (*Issuer, error) {
	if req.Name == "" || req.CommonName == "" || req.TTL <= 0 {
		return nil, errors.New("upstream: a new root needs a name, a common name and a positive lifetime")
	}
	keyType, keyBits := req.KeyType, req.KeyBits
	if keyType == "" {
		keyType, keyBits = "ec", 256
	}
	data := map[string]any{
		"issuer_name":          req.Name,
		"common_name":          req.CommonName,
		"ttl":                  strconv.FormatInt(int64(req.TTL/time.Second), 10) + "s",
		"key_type":             keyType,
		"key_bits":             keyBits,
		"format":               "pem",
		"exclude_cn_from_sans": true,
	}
	if !req.TrustDomain.IsZero() {
		data["organization"] = req.TrustDomain.Name()
		data["uri_sans"] = req.TrustDomain.IDString()
	}
	path := v.mount() + "/root/rotate/internal"
	sec, err := v.Client.Write(ctx, path, data)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("upstream: %s: empty answer", path)
	}
	return parseIssuer(path, sec.Data)
}

// parseIssuer reads an issuer from Vault's answer at path: issuer_id,
// issuer_name, certificate and ca_chain.
func parseIssuer(path string, data map[string]any) (*Issuer, error) {
	id, _ := data["issuer_id"].(string)
	name, _ := data["issuer_name"].(string)
	certPEM, _ := data["certificate"].(string)
	certs, err := pemfile.ParseCertificates([]byte(certPEM))
	if err != nil {
		return nil, fmt.Errorf("upstream: %s: the answer holds no issuer certificate: %w", path, err)
	}
	if id == "" {
		return nil, fmt.Errorf("upstream: %s: the answer names no issuer_id", path)
	}
	iss := &Issuer{ID: id, Name: name, Cert: certs[0]}
	list, _ := data["ca_chain"].([]any)
	if iss.Chain, err = parseChain(path, iss.Cert, list); err != nil {
		return nil, err
	}
	return iss, nil
}

// parseChain reads the certificates above cert from list, Vault's
// ca_chain (PEM strings), leaving out cert itself and repeats.
func parseChain(path string, cert *x509.Certificate, list []any) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, v := range list {
		p, _ := v.(string)
		certs, err := pemfile.ParseCertificates([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("upstream: %s: bad certificate in ca_chain: %w", path, err)
		}
		for _, c := range certs {
			if !c.Equal(cert) && !containsCert(chain, c) {
				chain = append(chain, c)
			}
		}
	}
	return chain, nil
}

// SignIntermediate has Vault sign csrPEM as a CA certificate that may not
// sign other CAs (path length 0), with the subject and SANs of the CSR.
func (v *VaultPKI) SignIntermediate(ctx context.Context, csrPEM []byte, ttl time.Duration) (*x509.Certificate, []*x509.Certificate, error) {
	sec, err := v.Client.Write(ctx, v.path(), map[string]any{
		"csr":                  string(csrPEM),
		"use_csr_values":       true,
		"ttl":                  strconv.FormatInt(int64(ttl/time.Second), 10) + "s",
		"format":               "pem",
		"max_path_length":      0,
		"exclude_cn_from_sans": true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("upstream: %w", err)
	}
	if sec == nil || sec.Data == nil {
		return nil, nil, fmt.Errorf("upstream: %s: empty answer", v.path())
	}
	certPEM, _ := sec.Data["certificate"].(string)
	certs, err := pemfile.ParseCertificates([]byte(certPEM))
	if err != nil || len(certs) == 0 {
		return nil, nil, fmt.Errorf("upstream: %s: the answer holds no certificate: %v", v.path(), err)
	}
	cert := certs[0]
	list, _ := sec.Data["ca_chain"].([]any)
	if s, ok := sec.Data["issuing_ca"].(string); ok && len(list) == 0 {
		list = []any{s}
	}
	chain, err := parseChain(v.path(), cert, list)
	if err != nil {
		return nil, nil, err
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("upstream: " + v.path() + ": the answer holds no issuing CA")
	}
	return cert, chain, nil
}
