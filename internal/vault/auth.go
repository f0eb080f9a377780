package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// Auth is a way to obtain a Vault token. The implementations are
// TokenAuth, AppRoleAuth and KubernetesAuth.
type Auth interface {
	// Method names the auth method in logs and metrics.
	Method() string
	// login returns a token and its lifetime (zero when unknown or
	// unlimited).
	login(ctx context.Context, c *api.Client) (token string, ttl time.Duration, err error)
}

// TokenAuth uses a Vault token given directly or read from a file. With a
// file, the file is read again at every login, so a token renewed by an
// agent beside Castellan is picked up after a permission-denied answer.
type TokenAuth struct {
	// Token is the token. It is used when File is empty.
	Token string
	// File holds the token (surrounding white space is ignored).
	File string
}

// Method returns "token".
func (TokenAuth) Method() string { return "token" }

func (a TokenAuth) login(context.Context, *api.Client) (string, time.Duration, error) {
	tok := a.Token
	if a.File != "" {
		b, err := os.ReadFile(a.File)
		if err != nil {
			return "", 0, fmt.Errorf("token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			return "", 0, fmt.Errorf("token file %s is empty", a.File)
		}
	}
	if tok == "" {
		return "", 0, errors.New("no token given")
	}
	return tok, 0, nil
}

// AppRoleAuth logs in with a role ID and secret ID at <Mount>/login.
type AppRoleAuth struct {
	// Mount is the auth method's mount path. Default: "approle".
	Mount string
	// RoleID is the role's ID. Required.
	RoleID string
	// SecretID is the secret ID. It is used when SecretIDFile is empty.
	SecretID string
	// SecretIDFile holds the secret ID; it is read at every login.
	SecretIDFile string
}

// Method returns "approle".
func (AppRoleAuth) Method() string { return "approle" }

func (a AppRoleAuth) login(ctx context.Context, c *api.Client) (string, time.Duration, error) {
	if a.RoleID == "" {
		return "", 0, errors.New("approle: no role ID given")
	}
	secretID := a.SecretID
	if a.SecretIDFile != "" {
		b, err := os.ReadFile(a.SecretIDFile)
		if err != nil {
			return "", 0, fmt.Errorf("approle: secret ID file: %w", err)
		}
		secretID = strings.TrimSpace(string(b))
	}
	data := map[string]any{"role_id": a.RoleID}
	if secretID != "" {
		data["secret_id"] = secretID
	}
	return loginAt(ctx, c, mountOr(a.Mount, "approle"), data)
}

// KubernetesAuth exchanges a Kubernetes service-account token for a Vault
// token at <Mount>/login. The token file is read at every login, so a
// projected token that the kubelet rotates is always fresh.
type KubernetesAuth struct {
	// Mount is the auth method's mount path. Default: "kubernetes".
	Mount string
	// Role is the Vault role to log in as. Required.
	Role string
	// TokenFile holds the service-account JWT. Default:
	// /var/run/secrets/kubernetes.io/serviceaccount/token.
	TokenFile string
}

// DefaultKubernetesTokenFile is where a pod finds its service-account token.
const DefaultKubernetesTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Method returns "kubernetes".
func (KubernetesAuth) Method() string { return "kubernetes" }

func (a KubernetesAuth) login(ctx context.Context, c *api.Client) (string, time.Duration, error) {
	if a.Role == "" {
		return "", 0, errors.New("kubernetes: no role given")
	}
	file := a.TokenFile
	if file == "" {
		file = DefaultKubernetesTokenFile
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", 0, fmt.Errorf("kubernetes: service-account token: %w", err)
	}
	jwt := strings.TrimSpace(string(b))
	if jwt == "" {
		return "", 0, fmt.Errorf("kubernetes: service-account token file %s is empty", file)
	}
	return loginAt(ctx, c, mountOr(a.Mount, "kubernetes"), map[string]any{"role": a.Role, "jwt": jwt})
}

// loginAt writes data to auth/<mount>/login with no token and returns the
// token Vault gives back.
func loginAt(ctx context.Context, c *api.Client, mount string, data map[string]any) (string, time.Duration, error) {
	path := "auth/" + mount + "/login"
	s, err := c.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return "", 0, describe(path, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return "", 0, fmt.Errorf("%s: the answer holds no token", path)
	}
	return s.Auth.ClientToken, time.Duration(s.Auth.LeaseDuration) * time.Second, nil
}

func mountOr(m, def string) string {
	m = strings.Trim(m, "/")
	if m == "" {
		return def
	}
	return m
}
