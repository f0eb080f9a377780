package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// runCARotate is "castellan ca rotate prepare|activate|retire|status".
func runCARotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("usage: castellan ca rotate prepare|activate|retire|status [flags]")}
	}
	step := args[0]
	fs := flag.NewFlagSet("castellan ca rotate "+step, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "/var/lib/castellan", "the CA's data directory")
	trustDomain := fs.String("trust-domain", "cluster.local", "trust domain named in a new self-signed root")
	rootTTL := fs.Duration("root-ttl", 10*365*24*time.Hour, "lifetime of a new self-signed root")
	propagation := fs.Duration("root-propagation-delay", time.Hour, "time a prepared root must sit in the bundle before it may sign")
	maxTTL := fs.Duration("max-ttl", 24*time.Hour, "the CA's longest SVID lifetime (the old root is kept that long after activation)")
	from := fs.String("from", "", "prepare, plugged-in CA: directory holding the next cacerts")
	force := fs.Bool("force", false, "activate or retire before it is known to be safe")
	format := fs.String("format", "text", "status output: text or json")
	if err := cliflag.Parse(fs, "CASTELLAN", args[1:], nil); err != nil {
		return usageError{err}
	}
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		return usageError{fmt.Errorf("--trust-domain %q: %w", *trustDomain, err)}
	}
	r := &material.Rotator{Dir: *dataDir, TrustDomain: td, RootTTL: *rootTTL, PropagationDelay: *propagation, MaxTTL: *maxTTL}
	switch step {
	case "prepare":
		err = r.Prepare(ctx, *from)
	case "activate":
		err = r.Activate(ctx, *force)
	case "retire":
		err = r.Retire(ctx, *force)
	case "status":
	default:
		return usageError{fmt.Errorf("unknown rotate step %q: want prepare, activate, retire or status", step)}
	}
	if err != nil {
		return err
	}
	st, err := r.Status()
	if err != nil {
		return err
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printRotation(stdout, st)
	return nil
}

func printRotation(w io.Writer, st *material.RotationStatus) {
	fmt.Fprintf(w, "mode   %s\nphase  %s\n", st.Mode, st.Phase)
	if !st.ActivateAfter.IsZero() {
		fmt.Fprintf(w, "activate after  %s\n", st.ActivateAfter.Format(time.RFC3339))
	}
	if !st.RetireAfter.IsZero() {
		fmt.Fprintf(w, "retire after    %s\n", st.RetireAfter.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tSERIAL\tNOT AFTER\tSUBJECT")
	for _, r := range st.Roots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.State, r.Serial, r.NotAfter.Format(time.RFC3339), r.Subject)
	}
	tw.Flush()
}
