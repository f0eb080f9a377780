// Package vault is Castellan's client for HashiCorp Vault. It logs in with
// a token, AppRole or Kubernetes auth, logs in again before its token
// expires or when Vault answers 403 (a revoked or expired token, a Vault
// restart), and retries the request once with the new token.
package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Client.
type Config struct {
	// Address is Vault's URL, such as https://vault.vault.svc:8200.
	// Required.
	Address string
	// CACertFile holds the PEM roots that verify Vault's TLS certificate.
	// Empty means the system roots.
	CACertFile string
	// Namespace is a Vault Enterprise namespace. Empty means none.
	Namespace string
	// Auth obtains tokens. Required.
	Auth Auth
	// Timeout bounds each HTTP request. Default: 30s.
	Timeout time.Duration
	// Logger receives login events. Tokens are never logged.
	// Default: slog.Default().
	Logger *slog.Logger
	// Registerer, if set, receives castellan_vault_logins_total.
	Registerer prometheus.Registerer
}

// Client calls Vault with a token it keeps fresh. It is safe for
// concurrent use.
type Client struct {
	api   *api.Client // carries the current token
	login *api.Client // never carries a token
	cfg   Config
	log   *slog.Logger
	m     *metrics

	mu      sync.Mutex // serialises logins
	gen     uint64     // incremented at each login
	refresh time.Time  // when to replace the token; zero when it has no known expiry
	now     func() time.Time
}

// New returns a Client for cfg. It does not contact Vault: the first
// request logs in.
func New(cfg Config) (*Client, error) {
	switch {
	case cfg.Address == "":
		return nil, errors.New("vault: no address given")
	case cfg.Auth == nil:
		return nil, errors.New("vault: no auth method given")
	}
	u, err := url.Parse(cfg.Address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("vault: address %q is not an http:// or https:// URL", cfg.Address)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ac := api.DefaultConfig()
	if ac.Error != nil {
		return nil, fmt.Errorf("vault: %w", ac.Error)
	}
	ac.Address = cfg.Address
	ac.Timeout = cfg.Timeout
	// Retries are the caller's: the CA backs off on its own schedule.
	ac.MaxRetries = 0
	if cfg.CACertFile != "" {
		if err := ac.ConfigureTLS(&api.TLSConfig{CACert: cfg.CACertFile}); err != nil {
			return nil, fmt.Errorf("vault: CA certificate file %s: %w", cfg.CACertFile, err)
		}
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	// The token comes from Auth only, never from VAULT_TOKEN.
	c.ClearToken()
	if cfg.Namespace != "" {
		c.SetNamespace(cfg.Namespace)
	}
	login, err := c.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	login.ClearToken()
	if cfg.Namespace != "" {
		login.SetNamespace(cfg.Namespace)
	}
	cl := &Client{api: c, login: login, cfg: cfg, log: cfg.Logger, now: time.Now}
	if cfg.Registerer != nil {
		if cl.m, err = registerMetrics(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	return cl, nil
}

// Address returns Vault's address.
func (c *Client) Address() string { return c.cfg.Address }

// Method returns the name of the auth method.
func (c *Client) Method() string { return c.cfg.Auth.Method() }

// Login obtains a new token now. Requests log in by themselves; Login is
// for checking the configuration at start-up.
func (c *Client) Login(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loginLocked(ctx)
}

func (c *Client) loginLocked(ctx context.Context) error {
	method := c.cfg.Auth.Method()
	tok, ttl, err := c.cfg.Auth.login(ctx, c.login)
	if err != nil {
		c.m.login(method, false)
		return fmt.Errorf("vault: %s login at %s: %w", method, c.cfg.Address, err)
	}
	c.api.SetToken(tok)
	c.gen++
	c.refresh = time.Time{}
	if ttl > 0 {
		c.refresh = c.now().Add(ttl - renewMargin(ttl))
	}
	c.m.login(method, true)
	c.log.Info("logged in to Vault", "addr", c.cfg.Address, "method", method, "ttl", ttl)
	return nil
}

// token makes sure a token is set that will not expire in the next few
// seconds, and returns its generation.
func (c *Client) token(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen > 0 && (c.refresh.IsZero() || c.now().Before(c.refresh)) {
		return c.gen, nil
	}
	if err := c.loginLocked(ctx); err != nil {
		return 0, err
	}
	return c.gen, nil
}

// renewMargin is how long before expiry a token is replaced: a tenth of
// its lifetime, at least one second (and never more than the lifetime).
func renewMargin(ttl time.Duration) time.Duration {
	m := max(ttl/10, time.Second)
	return min(m, ttl)
}

// relogin replaces the token of generation gen after Vault refused it.
// If another request already replaced it, it does nothing.
func (c *Client) relogin(ctx context.Context, gen uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return nil
	}
	c.log.Warn("Vault refused the token; logging in again", "addr", c.cfg.Address, "method", c.cfg.Auth.Method())
	return c.loginLocked(ctx)
}

// Write writes data to path (PUT /v1/<path>) and returns Vault's answer.
func (c *Client) Write(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	return c.do(ctx, path, func() (*api.Secret, error) {
		return c.api.Logical().WriteWithContext(ctx, path, data)
	})
}

// Read reads path (GET /v1/<path>). It returns nil and no error when
// nothing is there.
func (c *Client) Read(ctx context.Context, path string) (*api.Secret, error) {
	return c.do(ctx, path, func() (*api.Secret, error) {
		return c.api.Logical().ReadWithContext(ctx, path)
	})
}

func (c *Client) do(ctx context.Context, path string, call func() (*api.Secret, error)) (*api.Secret, error) {
	gen, err := c.token(ctx)
	if err != nil {
		return nil, err
	}
	s, err := call()
	if IsPermissionDenied(err) {
		if lerr := c.relogin(ctx, gen); lerr != nil {
			return nil, fmt.Errorf("vault: %w (and logging in again failed: %v)", describe(path, err), lerr)
		}
		s, err = call()
	}
	if err != nil {
		return nil, fmt.Errorf("vault: %w", describe(path, err))
	}
	return s, nil
}
