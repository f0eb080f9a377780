package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Error is a problem with one resource: where it was read from, which
// resource it is (when that much could be decoded), which field is wrong and
// why.
type Error struct {
	Origin    Origin
	Kind      Kind
	Namespace string
	Name      string
	// Field is the path of the offending field, for example
	// "spec.rules[0].from[0].source.ipBlocks[1]"; empty when the problem is
	// with the document as a whole.
	Field string
	// Err says what is wrong.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("policy: ")
	if o := e.Origin.String(); o != "" {
		b.WriteString(o)
		b.WriteString(": ")
	}
	if e.Kind != "" || e.Name != "" {
		kind := string(e.Kind)
		if kind == "" {
			kind = "resource"
		}
		fmt.Fprintf(&b, "%s %s/%s: ", kind, e.Namespace, e.Name)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Key returns the key of the resource the error is about. It is only
// meaningful when Kind and Name are set.
func (e *Error) Key() Key {
	return Key{Kind: e.Kind, Namespace: e.Namespace, Name: e.Name}
}

// Errors returns every *Error inside err, which may be a single *Error or
// one built with errors.Join.
func Errors(err error) []*Error {
	if err == nil {
		return nil
	}
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if pe, ok := err.(*Error); ok {
			out = append(out, pe)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var pe *Error
		if errors.As(err, &pe) {
			out = append(out, pe)
		}
	}
	walk(err)
	return out
}

// fieldErrors collects field problems of one resource.
type fieldErrors struct {
	list []fieldError
}

type fieldError struct {
	path string
	err  error
}

func (f *fieldErrors) add(path string, format string, args ...any) {
	f.list = append(f.list, fieldError{path: path, err: fmt.Errorf(format, args...)})
}

// maxFieldErrors bounds how many problems one resource reports, so a hostile
// document cannot make the error output enormous.
const maxFieldErrors = 50

// errorsFor turns the collected field problems into *Errors about r.
func (f *fieldErrors) errorsFor(origin Origin, kind Kind, ns, name string) error {
	if len(f.list) == 0 {
		return nil
	}
	var errs []error
	for i, fe := range f.list {
		if i == maxFieldErrors {
			errs = append(errs, &Error{Origin: origin, Kind: kind, Namespace: ns, Name: name,
				Err: fmt.Errorf("%d more problems not shown", len(f.list)-maxFieldErrors)})
			break
		}
		errs = append(errs, &Error{Origin: origin, Kind: kind, Namespace: ns, Name: name, Field: fe.path, Err: fe.err})
	}
	return errors.Join(errs...)
}
