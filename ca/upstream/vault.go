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
	"github.com/castellan-mesh/castellan/kms/vault"
)

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
	var chainPEM []string
	if list, ok := sec.Data["ca_chain"].([]any); ok {
		for _, c := range list {
			if s, ok := c.(string); ok {
				chainPEM = append(chainPEM, s)
			}
		}
	}
	if len(chainPEM) == 0 {
		if s, ok := sec.Data["issuing_ca"].(string); ok {
			chainPEM = append(chainPEM, s)
		}
	}
	var chain []*x509.Certificate
	for _, p := range chainPEM {
		cs, err := pemfile.ParseCertificates([]byte(p))
		if err != nil {
			return nil, nil, fmt.Errorf("upstream: %s: bad certificate in ca_chain: %w", v.path(), err)
		}
		for _, c := range cs {
			if !c.Equal(cert) && !containsCert(chain, c) {
				chain = append(chain, c)
			}
		}
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("upstream: " + v.path() + ": the answer holds no issuing CA")
	}
	return cert, chain, nil
}
