package inspect

import (
	"encoding/json"
	"fmt"
	"io"
)

// WriteJSON writes r as one indented JSON document followed by a newline. The
// schema is Report's; see the package documentation.
func WriteJSON(w io.Writer, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("inspect: encoding report: %w", err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("inspect: writing report: %w", err)
	}
	return nil
}
