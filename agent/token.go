package agent

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// maxTokenSize bounds the token file read on each CA call.
const maxTokenSize = 64 << 10

// readToken reads the service-account token from path. The kubelet
// rotates the file, so it is read afresh for every CA call. The token's
// content never appears in an error or a log.
func readToken(path string) (string, error) {
	b, err := smallfile.Read(path, maxTokenSize)
	if err != nil {
		return "", fmt.Errorf("agent: token file: %w", err)
	}
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0:
		return "", fmt.Errorf("agent: token file %s is empty", path)
	case bytes.ContainsAny(b, " \t\r\n"):
		return "", errors.New("agent: token file " + path + " holds whitespace inside the token")
	}
	return string(b), nil
}
