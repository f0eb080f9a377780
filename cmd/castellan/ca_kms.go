package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/upstream"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/castellan-mesh/castellan/internal/vault"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/spf13/pflag"
)

// upstreamKeyFile is the intermediate's key in the data directory when an
// upstream signs the intermediate and no --signer-key-uri is given.
const upstreamKeyFile = "upstream-ca-key.pem"

// kmsFlags select where the CA key lives and whether an upstream authority
// (Vault's PKI engine) signs Castellan's intermediate.
type kmsFlags struct {
	keyURI, keyAlg string
	transitBatch   int

	upstream      string
	upstreamTTL   time.Duration
	renewFraction float64

	vaultAddr, vaultCACert, vaultNamespace string
	vaultAuth, vaultAuthMount              string
	vaultTokenFile                         string
	approleRoleID, approleSecretIDFile     string
	kubeRole, kubeTokenFile                string
	pkiMount, pkiIssuer                    string

	client *vault.Client // made on first use
	// ring holds a self-signed root's keys when --signer-key-uri names
	// them: rotations create the next root's key in the same store.
	ring *kms.Ring
}

func (k *kmsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.keyURI, "signer-key-uri", "", "CA signing key: file:///path, pkcs11:token=<label>;object=<label>?module-path=<lib>&pin-source=<file>, or vault-transit://<mount>/<key>; created on first start if missing (default: a key file in --data-dir)")
	fs.StringVar(&k.keyAlg, "signer-key-algorithm", string(kms.ECDSAP256), "algorithm of a CA key created on first start: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.IntVar(&k.transitBatch, "vault-transit-max-batch", 32, "most signatures sent in one Vault Transit call when signing concurrently (1 disables batching)")
	fs.StringVar(&k.upstream, "upstream", "", `upstream CA that signs Castellan's intermediate: "vault" (Vault's PKI engine), or empty for a self-signed root`)
	fs.DurationVar(&k.upstreamTTL, "upstream-ttl", 72*time.Hour, "intermediate lifetime asked of the upstream CA")
	fs.Float64Var(&k.renewFraction, "upstream-renew-fraction", 0.5, "renew the intermediate after this fraction of its lifetime, in (0, 1)")
	k.registerVault(fs)
	// Only the running CA signs intermediates; "castellan ca rotate
	// prepare" names the next issuer with --from.
	fs.StringVar(&k.pkiIssuer, "vault-pki-issuer", "", "issuer (name or ID) that signs the intermediate, via <mount>/issuer/<issuer>/sign-intermediate (default: the mount's default issuer, via <mount>/root/sign-intermediate); once a root rotation is activated, the issuer it recorded in --data-dir signs instead")
}

// registerVault registers the flags that reach Vault.
func (k *kmsFlags) registerVault(fs *pflag.FlagSet) {
	fs.StringVar(&k.vaultAddr, "vault-addr", "", "Vault address, e.g. https://vault.vault.svc:8200 (default: $VAULT_ADDR)")
	fs.StringVar(&k.vaultCACert, "vault-ca-cert", "", "PEM file of roots that verify Vault's TLS certificate (default: $VAULT_CACERT, else the system roots)")
	cliflag.StandardEnv(fs, "vault-addr", "VAULT_ADDR")
	cliflag.StandardEnv(fs, "vault-ca-cert", "VAULT_CACERT")
	fs.StringVar(&k.vaultNamespace, "vault-namespace", "", "Vault Enterprise namespace")
	fs.StringVar(&k.vaultAuth, "vault-auth", "token", "Vault auth method: token, approle or kubernetes")
	fs.StringVar(&k.vaultAuthMount, "vault-auth-mount", "", "mount path of the Vault auth method (default: approle or kubernetes)")
	fs.StringVar(&k.vaultTokenFile, "vault-token-file", "", "file holding the Vault token for --vault-auth=token (default: the VAULT_TOKEN environment variable)")
	fs.StringVar(&k.approleRoleID, "vault-approle-role-id", "", "AppRole role ID for --vault-auth=approle")
	fs.StringVar(&k.approleSecretIDFile, "vault-approle-secret-id-file", "", "file holding the AppRole secret ID")
	fs.StringVar(&k.kubeRole, "vault-kubernetes-role", "", "Vault role for --vault-auth=kubernetes")
	fs.StringVar(&k.kubeTokenFile, "vault-kubernetes-token-file", vault.DefaultKubernetesTokenFile, "service-account token exchanged at auth/kubernetes/login")
	fs.StringVar(&k.pkiMount, "vault-pki-mount", "pki", "mount path of Vault's PKI engine for --upstream=vault")
}

// vaultClient returns the Vault client the flags describe.
func (k *kmsFlags) vaultClient(d *caDeps) (*vault.Client, error) {
	if k.client != nil {
		return k.client, nil
	}
	auth, err := k.vaultAuthMethod()
	if err != nil {
		return nil, err
	}
	c, err := vault.New(vault.Config{
		Address: k.vaultAddr, CACertFile: k.vaultCACert, Namespace: k.vaultNamespace,
		Auth: auth, Logger: d.log, Registerer: d.reg,
	})
	if err != nil {
		return nil, usageError{Err: err}
	}
	k.client = c
	return c, nil
}

// vaultAuthMethod checks the Vault flags, without reaching Vault, and
// returns the auth method they name.
func (k *kmsFlags) vaultAuthMethod() (vault.Auth, error) {
	if k.vaultAddr == "" {
		return nil, usageError{Err: errors.New("--vault-addr is required for --upstream=vault and vault-transit keys (or VAULT_ADDR)")}
	}
	var auth vault.Auth
	switch k.vaultAuth {
	case "token":
		a := vault.TokenAuth{File: k.vaultTokenFile}
		if a.File == "" {
			a.Token = os.Getenv("VAULT_TOKEN")
			if a.Token == "" {
				return nil, usageError{Err: errors.New("--vault-auth=token needs --vault-token-file or the VAULT_TOKEN environment variable")}
			}
		}
		auth = a
	case "approle":
		if k.approleRoleID == "" {
			return nil, usageError{Err: errors.New("--vault-auth=approle needs --vault-approle-role-id")}
		}
		auth = vault.AppRoleAuth{Mount: k.vaultAuthMount, RoleID: k.approleRoleID, SecretIDFile: k.approleSecretIDFile}
	case "kubernetes":
		if k.kubeRole == "" {
			return nil, usageError{Err: errors.New("--vault-auth=kubernetes needs --vault-kubernetes-role")}
		}
		auth = vault.KubernetesAuth{Mount: k.vaultAuthMount, Role: k.kubeRole, TokenFile: k.kubeTokenFile}
	default:
		return nil, usageError{Err: fmt.Errorf("--vault-auth %q: want token, approle or kubernetes", k.vaultAuth)}
	}
	return auth, nil
}

// validate checks the key and upstream flags of "castellan ca" before
// anything is created: a key, a file in the data directory, a Vault call.
func (k *kmsFlags) validate() error {
	switch k.upstream {
	case "", "vault":
	default:
		return usageError{Err: fmt.Errorf("--upstream %q: want vault, or empty for a self-signed root", k.upstream)}
	}
	if _, err := kms.ParseAlgorithm(k.keyAlg); err != nil {
		return usageError{Err: fmt.Errorf("--signer-key-algorithm: %w", err)}
	}
	needVault := k.upstream == "vault"
	if k.keyURI != "" {
		u, err := kms.ParseURI(k.keyURI)
		if err != nil {
			return usageError{Err: fmt.Errorf("--signer-key-uri: %w", err)}
		}
		needVault = needVault || u.Scheme == kms.SchemeVaultTransit
	}
	if k.upstream != "" {
		if k.renewFraction <= 0 || k.renewFraction >= 1 {
			return usageError{Err: fmt.Errorf("--upstream-renew-fraction %g: want a number between 0 and 1, exclusive", k.renewFraction)}
		}
		if k.upstreamTTL <= 0 {
			return usageError{Err: fmt.Errorf("--upstream-ttl %s: want a positive duration", k.upstreamTTL)}
		}
	}
	if needVault {
		if _, err := k.vaultAuthMethod(); err != nil {
			return err
		}
	}
	return nil
}

// signer returns the CA key named by the flags, or nil for the default
// (a key file in the data directory).
func (k *kmsFlags) signer(ctx context.Context, d *caDeps) (crypto.Signer, error) {
	switch k.upstream {
	case "", "vault":
	default:
		return nil, usageError{Err: fmt.Errorf("--upstream %q: want vault, or empty for a self-signed root", k.upstream)}
	}
	if k.upstream == "vault" {
		// The Vault settings (address, CA file, auth) are checked before
		// a key is created in the data directory.
		if _, err := k.vaultClient(d); err != nil {
			return nil, err
		}
	}
	uri := k.keyURI
	if uri == "" {
		if k.upstream == "" {
			return nil, nil
		}
		uri = "file://" + filepath.Join(absDir(d.dataDir), upstreamKeyFile)
	}
	alg, err := kms.ParseAlgorithm(k.keyAlg)
	if err != nil {
		return nil, usageError{Err: fmt.Errorf("--signer-key-algorithm: %w", err)}
	}
	u, err := kms.ParseURI(uri)
	if err != nil {
		return nil, usageError{Err: fmt.Errorf("--signer-key-uri: %w", err)}
	}
	cfg := kms.Config{Logger: d.log, Registerer: d.reg, TransitMaxBatch: k.transitBatch}
	if u.Scheme == kms.SchemeVaultTransit {
		if cfg.Vault, err = k.vaultClient(d); err != nil {
			return nil, err
		}
	}
	if k.upstream == "" {
		// A self-signed root: its successors' keys go in the same store.
		ring, err := kms.NewRing(ctx, uri, alg, cfg)
		if err != nil {
			return nil, err
		}
		key, created, err := ring.OpenOrCreate(ctx, "")
		if err != nil {
			ring.Close()
			return nil, err
		}
		d.log.Info("CA signing key ready", "uri", ring.URI(""), "created", created)
		k.ring = ring
		return key, nil
	}
	key, created, err := kms.OpenOrCreate(ctx, uri, alg, cfg)
	if err != nil {
		return nil, err
	}
	d.log.Info("CA signing key ready", "uri", key.URI(), "created", created)
	return key, nil
}

// rootKeys returns the key store of a self-signed root whose key
// --signer-key-uri names, or nil.
func (k *kmsFlags) rootKeys() rotation.KeyStore {
	if k.ring == nil {
		return nil
	}
	return k.ring
}

// source returns the upstream-backed signing material, or nil when no
// upstream is configured. Background jobs go in d.runners.
func (k *kmsFlags) source(ctx context.Context, d *caDeps, signer crypto.Signer) (ca.Source, error) {
	if k.upstream == "" {
		return nil, nil
	}
	if k.renewFraction <= 0 || k.renewFraction >= 1 {
		return nil, usageError{Err: fmt.Errorf("--upstream-renew-fraction %g: want a number between 0 and 1, exclusive", k.renewFraction)}
	}
	if k.upstreamTTL <= 0 {
		return nil, usageError{Err: fmt.Errorf("--upstream-ttl %s: want a positive duration", k.upstreamTTL)}
	}
	client, err := k.vaultClient(d)
	if err != nil {
		return nil, err
	}
	src, err := upstream.New(ctx, upstream.Config{
		Upstream:       &upstream.VaultPKI{Client: client, Mount: k.pkiMount, Issuer: k.pkiIssuer},
		Signer:         signer,
		TrustDomain:    d.trustDomain,
		DataDir:        d.dataDir,
		TTL:            k.upstreamTTL,
		RenewFraction:  k.renewFraction,
		RotationPolicy: d.policy,
		Logger:         d.log,
		Registerer:     d.reg,
	})
	if err != nil {
		return nil, err
	}
	d.runners = append(d.runners, src.Run)
	d.rotation = src.Rotation()
	return src, nil
}

func absDir(dir string) string {
	if a, err := filepath.Abs(dir); err == nil {
		return a
	}
	return dir
}
