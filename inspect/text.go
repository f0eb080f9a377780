package inspect

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// TextOptions tunes WriteText. The zero value writes plain text.
type TextOptions struct {
	// Color adds ANSI colour; set it only when writing to a terminal.
	Color bool
}

// ANSI escape sequences used when TextOptions.Color is set.
const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
)

// labelWidth aligns every "label value" line of the text format.
const labelWidth = 20

// WriteText writes r for a human: every certificate field by field, the
// bundle, the verification results and the findings, aligned in columns.
func WriteText(w io.Writer, r *Report, opts TextOptions) error {
	p := &printer{w: w, color: opts.Color}
	p.field("", "Source", r.Source)
	p.field("", "Inspected", stamp(r.InspectedAt))
	p.field("", "Status", p.status(r))
	p.field("", "Profile", profileText[r.Profile])

	for _, c := range r.Certificates {
		p.line("")
		p.line("%s", p.paint(ansiBold, c.Ref+"  "+c.Role))
		p.certificate(c, r.InspectedAt)
	}

	if r.Bundle != nil {
		p.line("")
		p.line("%s", p.paint(ansiBold, fmt.Sprintf("Bundle  %s (%s)", nameOr(r.Bundle.Source), plural(len(r.Bundle.Certificates), "certificate"))))
		for _, c := range r.Bundle.Certificates {
			p.line("  %s", p.paint(ansiBold, c.Ref+"  "+c.Role))
			p.field("    ", "Subject", nameOr(c.Subject))
			if c.SPIFFEID != "" {
				p.field("    ", "SPIFFE ID", c.SPIFFEID)
			}
			p.field("    ", "Not after", c.Validity.NotAfter.Format(time.RFC3339)+" ("+p.validityNote(c.Validity, r.InspectedAt)+")")
			p.field("    ", "SHA-256", c.FingerprintSHA256)
		}
	}

	p.line("")
	p.line("%s", p.paint(ansiBold, "Verification"))
	p.field("  ", "Chain", p.chain(r.Verification.Chain, r.Profile))
	p.field("  ", "X509-SVID", p.svid(r.Verification.SVID, r.Profile))
	p.field("  ", "Private key", p.key(r.Verification.Key, r))

	if len(r.Notes) > 0 {
		p.line("")
		p.line("%s", p.paint(ansiBold, "Notes"))
		for _, n := range r.Notes {
			p.line("  - %s", n)
		}
	}
	if len(r.Findings) > 0 {
		p.line("")
		p.line("%s", p.paint(ansiBold, "Findings"))
		for _, f := range r.Findings {
			sev := strings.ToUpper(string(f.Severity))
			col := ansiYellow
			if f.Severity == SeverityError {
				col = ansiRed
			}
			p.line("  %s %-9s %s: %s", p.paint(col, fmt.Sprintf("%-7s", sev)), f.Certificate, f.Code, f.Message)
		}
	}
	return p.err
}

// printer writes lines and remembers the first write error.
type printer struct {
	w     io.Writer
	color bool
	err   error
}

func (p *printer) line(format string, args ...any) {
	if p.err != nil {
		return
	}
	_, p.err = io.WriteString(p.w, strings.TrimRight(fmt.Sprintf(format, args...), " ")+"\n")
}

func (p *printer) field(indent, label, value string) {
	p.line("%s%-*s %s", indent, labelWidth-len(indent), label, value)
}

func (p *printer) optional(indent, label string, values []string) {
	if len(values) > 0 {
		p.field(indent, label, strings.Join(values, ", "))
	}
}

func (p *printer) paint(code, s string) string {
	if !p.color {
		return s
	}
	return code + s + ansiReset
}

func (p *printer) status(r *Report) string {
	var errs, warns int
	for _, f := range r.Findings {
		if f.Severity == SeverityError {
			errs++
		} else {
			warns++
		}
	}
	switch r.Status {
	case StatusInvalid:
		s := "INVALID (" + plural(errs, "error")
		if warns > 0 {
			s += ", " + plural(warns, "warning")
		}
		return p.paint(ansiRed, s+")")
	case StatusWarning:
		return p.paint(ansiYellow, "WARNING ("+plural(warns, "warning")+")")
	default:
		return p.paint(ansiGreen, "VALID")
	}
}

func (p *printer) certificate(c Certificate, now time.Time) {
	const in = "  "
	p.field(in, "Subject", nameOr(c.Subject))
	p.field(in, "Issuer", nameOr(c.Issuer))
	if c.SPIFFEID != "" {
		p.field(in, "SPIFFE ID", c.SPIFFEID)
	}
	if len(c.URIs) > 1 || (len(c.URIs) == 1 && c.URIs[0] != c.SPIFFEID) {
		p.optional(in, "URI SANs", c.URIs)
	}
	p.optional(in, "DNS SANs", c.DNSNames)
	p.optional(in, "IP SANs", c.IPAddresses)
	p.optional(in, "Email SANs", c.EmailAddresses)
	p.field(in, "Serial", c.Serial)
	p.field(in, "Public key", c.PublicKey.String())
	p.field(in, "Signature", c.SignatureAlgorithm)
	p.field(in, "Not before", c.Validity.NotBefore.Format(time.RFC3339))
	p.field(in, "Not after", c.Validity.NotAfter.Format(time.RFC3339)+" ("+p.validityNote(c.Validity, now)+")")
	ca := "no"
	if c.IsCA {
		ca = "yes"
		if c.MaxPathLen != nil {
			ca = fmt.Sprintf("yes, max path length %d", *c.MaxPathLen)
		}
	}
	p.field(in, "CA", ca)
	if len(c.KeyUsage) > 0 {
		ku := strings.Join(c.KeyUsage, ", ")
		if c.KeyUsageCritical {
			ku += " (critical)"
		}
		p.field(in, "Key usage", ku)
	} else {
		p.field(in, "Key usage", "(none)")
	}
	if len(c.ExtKeyUsage) > 0 {
		p.field(in, "Extended key usage", strings.Join(c.ExtKeyUsage, ", "))
	} else {
		p.field(in, "Extended key usage", "(none)")
	}
	p.field(in, "Subject key ID", orNone(c.SubjectKeyID))
	p.field(in, "Authority key ID", orNone(c.AuthorityKeyID))
	p.field(in, "SHA-256", c.FingerprintSHA256)
}

func (p *printer) validityNote(v Validity, now time.Time) string {
	note := remaining(v, now)
	switch v.State {
	case "expired":
		return p.paint(ansiRed, note)
	case "not_yet_valid":
		return p.paint(ansiRed, note)
	}
	return note
}

// remaining describes the time left of v at now, with its share of the
// lifetime: "expires in 12h, 50.0% of 24h left".
func remaining(v Validity, now time.Time) string {
	lifetime := time.Duration(v.LifetimeSeconds) * time.Second
	switch v.State {
	case "expired":
		return "expired " + humanDuration(now.Sub(v.NotAfter)) + " ago"
	case "not_yet_valid":
		return "not valid for another " + humanDuration(v.NotBefore.Sub(now))
	}
	return fmt.Sprintf("expires in %s, %.1f%% of %s left", humanDuration(v.NotAfter.Sub(now)), v.RemainingPercent, humanDuration(lifetime))
}

// profileText says what each profile is judged as.
var profileText = map[Profile]string{
	ProfileSVID:   "X509-SVID",
	ProfileTLS:    "TLS certificate (no SPIFFE ID)",
	ProfileCA:     "CA certificates",
	ProfileBundle: "trust bundle (unrelated roots)",
}

func (p *printer) chain(c ChainCheck, profile Profile) string {
	switch {
	case !c.Checked && profile == ProfileBundle:
		return "not checked: a bundle of roots, not a chain"
	case !c.Checked:
		return "not checked: no trust bundle"
	case c.Verified:
		return p.paint(ansiGreen, "verified") + ": " + strings.Join(c.Path, " -> ")
	default:
		return p.paint(ansiRed, "FAILED") + ": " + c.Error
	}
}

func (p *printer) svid(s SVIDCheck, profile Profile) string {
	what := "leaf SVID"
	if s.Kind == "signing" {
		what = "signing certificates"
	}
	switch {
	case !s.Checked && profile == ProfileTLS:
		return "not checked: an ordinary TLS certificate (no SPIFFE ID)"
	case !s.Checked:
		return "not checked: not an X509-SVID"
	case s.Conformant:
		out := p.paint(ansiGreen, "conformant") + " " + what
		if s.SPIFFEID != "" {
			out += " " + s.SPIFFEID
		}
		return out
	default:
		return p.paint(ansiRed, "NOT CONFORMANT") + " " + what + ": " + strings.Join(s.Violations, ", ")
	}
}

func (p *printer) key(k KeyCheck, r *Report) string {
	leaf := "the leaf"
	if len(r.Certificates) > 0 {
		leaf = r.Certificates[0].Ref
	}
	switch {
	case !k.Checked:
		return "not checked: no private key"
	case k.Matches:
		return p.paint(ansiGreen, "matches") + " " + leaf + " (key from " + nameOr(k.Source) + ")"
	default:
		return p.paint(ansiRed, "DOES NOT MATCH") + " " + leaf + " (key from " + nameOr(k.Source) + ")"
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
