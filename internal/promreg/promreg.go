// Package promreg registers Prometheus collectors in the two ways
// Castellan's components need: all of one component's collectors at once
// (Register), and a collector that several instances on one registry share
// (Shared). A nil Registerer registers nothing in both: the collectors
// still count, and nothing scrapes them.
package promreg

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers every collector in cs on reg. It tries each of them
// and returns every failure, joined, so that one failed start names every
// clash (a metric registered twice, two metrics of one name with different
// labels). A nil reg registers nothing and returns nil.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, fmt.Errorf("registering %s: %w", names(c), err))
		}
	}
	return errors.Join(errs...)
}

// names lists the metric names c describes, for an error message.
func names(c prometheus.Collector) string {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var ns []string
	for d := range ch {
		// A Desc shows its name only in its String form:
		// Desc{fqName: "name", ...}.
		s := d.String()
		if _, rest, ok := strings.Cut(s, `fqName: "`); ok {
			if name, _, ok := strings.Cut(rest, `"`); ok {
				s = name
			}
		}
		ns = append(ns, s)
	}
	if len(ns) == 0 {
		return "a collector that describes no metric"
	}
	return strings.Join(ns, ", ")
}

// Shared registers c on reg and returns the collector to use: c itself,
// or the identical collector already registered there, as when a
// component restarts in-process on the same registry or several clients
// share one. A collector of the same description but another type is an
// error. A nil reg leaves c unregistered and returns it.
func Shared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
		err = fmt.Errorf("%w (the collector registered is a %T)", err, are.ExistingCollector)
	}
	err = fmt.Errorf("registering %s: %w", names(c), err)
	var zero C
	return zero, err
}
