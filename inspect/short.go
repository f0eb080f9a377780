package inspect

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteShort writes one line per chain certificate: its ref, role, verdict,
// identity, expiry with the share of lifetime left, key and the start of its
// SHA-256 fingerprint, then the codes of the findings about it. Findings
// about the chain as a whole (a failed verification, a key mismatch, SVID
// violations) are reported on the leaf's line.
func WriteShort(w io.Writer, r *Report, opts TextOptions) error {
	p := &printer{color: opts.Color}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(r.Certificates) == 0 {
		fmt.Fprintf(tw, "-\t-\t%s\t%s\n", p.verdict(SeverityError), codes(findingsByCertificate(r.Findings)[""]))
		return flush(tw)
	}
	byCert := findingsByCertificate(r.Findings)
	for _, c := range r.Certificates {
		var worst Severity
		for _, f := range byCert[c.Ref] {
			if f.Severity == SeverityError || worst == "" {
				worst = f.Severity
			}
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s",
			c.Ref, c.Role, p.verdict(worst), identity(c),
			"not after "+c.Validity.NotAfter.Format("2006-01-02T15:04:05Z")+" ("+shortLeft(c.Validity)+")",
			strings.ReplaceAll(c.PublicKey.String(), " ", "-"),
			"sha256:"+shortFingerprint(c.FingerprintSHA256))
		if cs := codes(byCert[c.Ref]); cs != "" {
			line += "\t" + cs
		}
		fmt.Fprintln(tw, line)
	}
	return flush(tw)
}

func flush(tw *tabwriter.Writer) error {
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("inspect: writing report: %w", err)
	}
	return nil
}

func (p *printer) verdict(worst Severity) string {
	switch worst {
	case SeverityError:
		return p.paint(ansiRed, "INVALID")
	case SeverityWarning:
		return p.paint(ansiYellow, "WARNING")
	default:
		return p.paint(ansiGreen, "VALID")
	}
}

// identity picks what best names a certificate in one word.
func identity(c Certificate) string {
	switch {
	case c.SPIFFEID != "":
		return c.SPIFFEID
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	case c.Subject != "":
		return c.Subject
	default:
		return "(empty name)"
	}
}

func shortLeft(v Validity) string {
	switch v.State {
	case "expired":
		return "expired"
	case "not_yet_valid":
		return "not yet valid"
	}
	return fmt.Sprintf("%.1f%% left", v.RemainingPercent)
}

// findingsByCertificate groups findings by the certificate they are about
// ("" for the report as a whole), keeping their order, so that a report on
// tens of thousands of certificates is written in linear time.
func findingsByCertificate(findings []Finding) map[string][]Finding {
	by := make(map[string][]Finding)
	for _, f := range findings {
		by[f.Certificate] = append(by[f.Certificate], f)
	}
	return by
}

// codes lists the codes of findings, comma-separated.
func codes(findings []Finding) string {
	out := make([]string, len(findings))
	for i, f := range findings {
		out[i] = f.Code
	}
	return strings.Join(out, ",")
}

// shortFingerprint returns the first eight bytes of a colon-separated
// fingerprint as plain hex.
func shortFingerprint(fp string) string {
	fp = strings.ReplaceAll(fp, ":", "")
	return fp[:min(16, len(fp))]
}
