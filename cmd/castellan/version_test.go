package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &errb); code != 0 {
		t.Fatalf("castellan version exited %d: %s", code, errb.String())
	}
	for _, want := range []string{"castellan\n", "version:  ", "revision: ", "go:       go"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("castellan version output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"version", "extra"}, &out, &errb); code != 2 {
		t.Fatalf("castellan version extra exited %d, want 2 (usage): %s", code, errb.String())
	}
}
