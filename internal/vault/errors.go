package vault

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"
)

// ResponseError is Vault's answer to a failed request, on one line: the
// path, the HTTP status and Vault's messages. It wraps the
// *api.ResponseError; StatusCode(err) returns the status.
type ResponseError struct {
	// Path is the request path, without /v1/.
	Path string
	// Errors are Vault's messages.
	Errors []string

	err *api.ResponseError
}

// Error returns the path, the status and Vault's messages on one line.
func (e *ResponseError) Error() string {
	msg := strings.Join(e.Errors, "; ")
	if msg == "" {
		msg = http.StatusText(e.err.StatusCode)
	}
	return fmt.Sprintf("%s: HTTP %d: %s", e.Path, e.err.StatusCode, msg)
}

// Unwrap returns the *api.ResponseError.
func (e *ResponseError) Unwrap() error { return e.err }

// describe returns err with Vault's answer on one line, and path in it.
func describe(path string, err error) error {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return fmt.Errorf("%s: %w", path, err)
	}
	var msgs []string
	for _, m := range re.Errors {
		if m = strings.TrimSpace(m); m != "" {
			msgs = append(msgs, m)
		}
	}
	return &ResponseError{Path: path, Errors: msgs, err: re}
}

// IsPermissionDenied reports whether err is Vault's 403 answer.
func IsPermissionDenied(err error) bool {
	return StatusCode(err) == http.StatusForbidden
}

// StatusCode returns the HTTP status of Vault's answer in err, or 0 when
// err holds none (Vault could not be reached).
func StatusCode(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}
