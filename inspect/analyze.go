package inspect

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"
)

// Analyze inspects in and returns its report. It never fails: every problem,
// including an empty chain, becomes a Finding.
func Analyze(in Input, opts Options) *Report {
	a := &analysis{in: in, now: opts.now(), low: opts.lowLifetime()}
	a.r = &Report{
		SchemaVersion: SchemaVersion,
		Source:        in.Source,
		InspectedAt:   a.now,
		Certificates:  []Certificate{},
		Findings:      []Finding{},
		Notes:         append([]string(nil), in.Notes...),
	}
	a.refs = map[*x509.Certificate]string{}
	a.r.Profile = profileOf(in.Chain)
	for i, c := range in.Chain {
		ref := fmt.Sprintf("chain[%d]", i)
		a.refs[c] = ref
		d := describe(c, ref, a.now)
		d.Role = roleOf(i, c.IsCA, d.SelfSigned)
		a.r.Certificates = append(a.r.Certificates, d)
	}
	if len(in.Bundle) > 0 {
		a.r.Bundle = &Bundle{Source: in.BundleSource, Certificates: []Certificate{}}
		for i, c := range in.Bundle {
			ref := fmt.Sprintf("bundle[%d]", i)
			if _, dup := a.refs[c]; !dup {
				a.refs[c] = ref
			}
			d := describe(c, ref, a.now)
			d.Role = roleOf(1, c.IsCA, d.SelfSigned)
			a.r.Bundle.Certificates = append(a.r.Bundle.Certificates, d)
		}
	}

	for _, why := range in.Rejections {
		ref := ""
		if len(in.Chain) > 0 {
			ref = "chain[0]"
		}
		a.add("source-rejected", SeverityError, ref, "%s", why)
	}
	if len(in.Chain) == 0 {
		a.add("no-certificate", SeverityError, "", "the source holds no certificate")
		a.r.Status = statusOf(a.r.Findings)
		return a.r
	}
	if a.r.Profile == ProfileBundle {
		a.r.Notes = append(a.r.Notes, fmt.Sprintf("%d self-signed CA certificates: inspected as a trust bundle, not a chain", len(in.Chain)))
	}
	a.checkLifetimes()
	a.checkLinks()
	a.verifyChain()
	a.checkSVID()
	a.checkKey()
	a.r.Status = statusOf(a.r.Findings)
	return a.r
}

// profileOf decides what chain is: a bundle of roots, a CA chain, an
// X509-SVID (a leaf with a spiffe:// URI SAN) or an ordinary TLS
// certificate. An empty chain is judged as an SVID, the tool's default.
func profileOf(chain []*x509.Certificate) Profile {
	if len(chain) == 0 {
		return ProfileSVID
	}
	if len(chain) > 1 {
		bundle := true
		for _, c := range chain {
			if !c.IsCA || !selfSigned(c) {
				bundle = false
				break
			}
		}
		if bundle {
			return ProfileBundle
		}
	}
	if chain[0].IsCA {
		return ProfileCA
	}
	for _, u := range chain[0].URIs {
		if u != nil && strings.EqualFold(u.Scheme, "spiffe") {
			return ProfileSVID
		}
	}
	return ProfileTLS
}

// analysis carries the state of one Analyze call.
type analysis struct {
	in   Input
	now  time.Time
	low  float64
	r    *Report
	refs map[*x509.Certificate]string
}

func (a *analysis) add(code string, sev Severity, ref, format string, args ...any) {
	a.r.Findings = append(a.r.Findings, Finding{
		Code:        code,
		Severity:    sev,
		Certificate: ref,
		Message:     fmt.Sprintf(format, args...),
	})
}

// hasError reports whether an error finding has been recorded.
func (a *analysis) hasError() bool {
	for _, f := range a.r.Findings {
		if f.Severity == SeverityError {
			return true
		}
	}
	return false
}

func statusOf(findings []Finding) Status {
	s := StatusValid
	for _, f := range findings {
		switch f.Severity {
		case SeverityError:
			return StatusInvalid
		case SeverityWarning:
			s = StatusWarning
		}
	}
	return s
}

// checkLifetimes raises expired, not-yet-valid and low-lifetime findings for
// the chain (errors) and the bundle (warnings: one stale anchor among several
// need not break anything).
func (a *analysis) checkLifetimes() {
	for i, c := range a.r.Certificates {
		a.checkLifetime(c, a.in.Chain[i], "certificate", SeverityError)
	}
	if a.r.Bundle != nil {
		for i, c := range a.r.Bundle.Certificates {
			a.checkLifetime(c, a.in.Bundle[i], "trust anchor", SeverityWarning)
		}
	}
}

func (a *analysis) checkLifetime(c Certificate, cert *x509.Certificate, what string, sev Severity) {
	v := c.Validity
	switch v.State {
	case "expired":
		a.add("expired", sev, c.Ref, "the %s %s expired on %s, %s ago",
			what, c.Ref, stamp(v.NotAfter), humanDuration(a.now.Sub(cert.NotAfter)))
	case "not_yet_valid":
		a.add("not-yet-valid", sev, c.Ref, "the %s %s is not valid until %s, %s from now (is a clock wrong?)",
			what, c.Ref, stamp(v.NotBefore), humanDuration(cert.NotBefore.Sub(a.now)))
	default:
		lifetime := cert.NotAfter.Sub(cert.NotBefore)
		left := cert.NotAfter.Sub(a.now)
		if lifetime > 0 && float64(left) < a.low*float64(lifetime) {
			a.add("low-lifetime", SeverityWarning, c.Ref,
				"the %s %s has under %.0f%% of its lifetime left: it expires in %s (%.1f%% of %s); was it not renewed?",
				what, c.Ref, a.low*100, humanDuration(left), v.RemainingPercent, humanDuration(lifetime))
		}
	}
}

// stamp formats t for messages.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// humanDuration renders d coarsely: "3d 4h", "5h 12m", "42m 5s", "7s".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	d = d.Round(time.Second)
	days := d / (24 * time.Hour)
	hours := (d % (24 * time.Hour)) / time.Hour
	mins := (d % time.Hour) / time.Minute
	secs := (d % time.Minute) / time.Second
	switch {
	case days > 0 && hours > 0:
		return fmt.Sprintf("%dd %dh", days, hours)
	case days > 0:
		return fmt.Sprintf("%dd", days)
	case hours > 0 && mins > 0:
		return fmt.Sprintf("%dh %dm", hours, mins)
	case hours > 0:
		return fmt.Sprintf("%dh", hours)
	case mins > 0 && secs > 0:
		return fmt.Sprintf("%dm %ds", mins, secs)
	case mins > 0:
		return fmt.Sprintf("%dm", mins)
	default:
		return fmt.Sprintf("%ds", secs)
	}
}
