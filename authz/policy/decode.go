package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/api/security/v1"
	"sigs.k8s.io/yaml"
)

// Size limits that keep a hostile input from exhausting memory.
const (
	// MaxDocumentSize is the largest YAML or JSON document Decode accepts.
	MaxDocumentSize = 16 << 20
	// MaxInputSize is the largest input (file) Decode accepts.
	MaxInputSize = 64 << 20
)

// Decode decodes every YAML (or JSON) document in data. file names the
// input in errors. It returns the valid AuthorizationPolicy and
// PeerAuthentication resources in input order, and an error joining an
// *Error for every document with a problem. A resource that fails
// validation is still returned, in its fail-closed form with Invalid set,
// when its name can be read. A RequestAuthentication is reported with an
// *Error wrapping ErrRequestAuthenticationUnsupported. Documents of other
// kinds (Deployments, ...) are skipped silently; a "kind: List" document is
// expanded into its items.
func Decode(data []byte, file string) ([]*Resource, error) {
	if len(data) > MaxInputSize {
		return nil, &Error{Origin: Origin{File: file}, Err: fmt.Errorf("input is %d bytes, more than the limit of %d", len(data), MaxInputSize)}
	}
	var (
		out  []*Resource
		errs []error
	)
	for _, d := range splitDocuments(data) {
		origin := Origin{File: file, Doc: d.index, Line: d.line}
		if len(d.data) > MaxDocumentSize {
			errs = append(errs, &Error{Origin: origin, Err: fmt.Errorf("document is %d bytes, more than the limit of %d", len(d.data), MaxDocumentSize)})
			continue
		}
		js, err := yaml.YAMLToJSONStrict(d.data)
		if err != nil {
			errs = append(errs, &Error{Origin: origin, Err: fmt.Errorf("invalid YAML: %w", err)})
			continue
		}
		rs, err := decodeJSONDocument(js, origin)
		out = append(out, rs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// DecodeObject decodes and validates one object given as JSON, for example
// an object from the Kubernetes API. It returns (nil, nil) for a kind this
// package does not handle. An invalid resource is returned in its
// fail-closed form together with the error.
func DecodeObject(data []byte, origin Origin) (*Resource, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, &Error{Origin: origin, Err: fmt.Errorf("invalid JSON: %w", err)}
	}
	return decodeObject(top, origin, "")
}

// decodeJSONDocument decodes one document, which may be a single object, a
// List of objects or empty.
func decodeJSONDocument(js []byte, origin Origin) ([]*Resource, error) {
	js = bytes.TrimSpace(js)
	if len(js) == 0 || string(js) == "null" {
		return nil, nil // an empty document, for example only comments
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return nil, &Error{Origin: origin, Err: errors.New("document is not an object")}
	}
	var kind string
	_ = json.Unmarshal(top["kind"], &kind)
	if kind != "List" && !strings.HasSuffix(kind, "List") {
		r, err := decodeObject(top, origin, "")
		if r == nil {
			return nil, err
		}
		return []*Resource{r}, err
	}
	// A List (kubectl get -o yaml) or a typed list: decode every item.
	var items []json.RawMessage
	if err := json.Unmarshal(top["items"], &items); err != nil && top["items"] != nil {
		return nil, &Error{Origin: origin, Field: "items", Err: errors.New("want a list of objects")}
	}
	var (
		out  []*Resource
		errs []error
	)
	for i, item := range items {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(item, &obj); err != nil {
			errs = append(errs, &Error{Origin: origin, Field: fmt.Sprintf("items[%d]", i), Err: errors.New("want an object")})
			continue
		}
		r, err := decodeObject(obj, origin, fmt.Sprintf("items[%d].", i))
		if r != nil {
			out = append(out, r)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// decodeObject decodes one Kubernetes-style object. prefix is prepended to
// field paths (for items of a List).
func decodeObject(top map[string]json.RawMessage, origin Origin, prefix string) (*Resource, error) {
	var apiVersion, kind string
	if err := unmarshalString(top["apiVersion"], &apiVersion); err != nil {
		return nil, &Error{Origin: origin, Field: prefix + "apiVersion", Err: err}
	}
	if err := unmarshalString(top["kind"], &kind); err != nil {
		return nil, &Error{Origin: origin, Field: prefix + "kind", Err: err}
	}
	group, version, _ := strings.Cut(apiVersion, "/")
	if group == Group && kind == string(KindRequestAuthentication) {
		return nil, requestAuthenticationNotice(top, origin, prefix)
	}
	if group != Group || (kind != string(KindAuthorizationPolicy) && kind != string(KindPeerAuthentication)) {
		if apiVersion == "" && kind == "" {
			return nil, &Error{Origin: origin, Err: errors.New("missing apiVersion and kind")}
		}
		return nil, nil // some other resource: not ours to judge
	}
	r := &Resource{APIVersion: apiVersion, Kind: Kind(kind), Origin: origin}
	var fe fieldErrors
	if version != "v1" && version != "v1beta1" {
		fe.add(prefix+"apiVersion", "unsupported version %q of %s (want v1 or v1beta1)", apiVersion, kind)
	}
	for k := range top {
		switch k {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			fe.add(prefix+k, "unknown field")
		}
	}
	decodeMeta(top["metadata"], &r.Meta, prefix+"metadata", &fe)

	spec := top["spec"]
	if len(spec) == 0 || string(spec) == "null" {
		spec = []byte("{}")
	}
	var msg proto.Message
	switch r.Kind {
	case KindAuthorizationPolicy:
		r.AuthorizationPolicy = &securityv1.AuthorizationPolicy{}
		msg = r.AuthorizationPolicy
	case KindPeerAuthentication:
		r.PeerAuthentication = &securityv1.PeerAuthentication{}
		msg = r.PeerAuthentication
	}
	n := len(fe.list)
	checkJSON(msg.ProtoReflect().Descriptor(), spec, prefix+"spec", &fe)
	if len(fe.list) == n {
		// The walk found no unknown field or type mismatch; protojson, which
		// rejects unknown fields too, does the actual decoding.
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(spec, msg); err != nil {
			fe.add(prefix+"spec", "%v", cleanProtoError(err))
		} else {
			switch r.Kind {
			case KindAuthorizationPolicy:
				validateAuthorizationPolicy(r.AuthorizationPolicy, r.Meta.Namespace, prefix+"spec", &fe)
			case KindPeerAuthentication:
				validatePeerAuthentication(r.PeerAuthentication, prefix+"spec", &fe)
			}
		}
	}
	if err := fe.errorsFor(origin, r.Kind, r.Meta.Namespace, r.Meta.Name); err != nil {
		return failClosed(r, spec, err), err
	}
	return r, nil
}

func unmarshalString(raw json.RawMessage, dst *string) error {
	if raw == nil {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return errors.New("want a string")
	}
	return nil
}

// cleanProtoError drops protojson's "proto:" prefix and its unstable
// whitespace so that messages read well after our own prefix.
func cleanProtoError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "proto:")
	return strings.Join(strings.Fields(s), " ")
}

// objectMetaFields are the fields of a Kubernetes ObjectMeta. Any other key
// under metadata is reported as unknown.
var objectMetaFields = map[string]bool{
	"name": true, "generateName": true, "namespace": true, "selfLink": true,
	"uid": true, "resourceVersion": true, "generation": true,
	"creationTimestamp": true, "deletionTimestamp": true,
	"deletionGracePeriodSeconds": true, "labels": true, "annotations": true,
	"ownerReferences": true, "finalizers": true, "managedFields": true,
}

// DefaultNamespace is the namespace of a resource whose metadata has none,
// as kubectl would apply it.
const DefaultNamespace = "default"

func decodeMeta(raw json.RawMessage, m *Meta, path string, fe *fieldErrors) {
	if raw == nil || string(raw) == "null" {
		fe.add(path, "missing metadata")
		return
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		fe.add(path, "want an object")
		return
	}
	for k := range fields {
		if !objectMetaFields[k] {
			fe.add(path+"."+k, "unknown field")
		}
	}
	str := func(k string, dst *string) {
		if err := unmarshalString(fields[k], dst); err != nil {
			fe.add(path+"."+k, "%v", err)
		}
	}
	str("name", &m.Name)
	str("namespace", &m.Namespace)
	str("resourceVersion", &m.ResourceVersion)
	str("uid", &m.UID)
	strMap := func(k string) map[string]string {
		raw := fields[k]
		if raw == nil || string(raw) == "null" {
			return nil
		}
		var v map[string]string
		if err := json.Unmarshal(raw, &v); err != nil {
			fe.add(path+"."+k, "want a map of strings")
		}
		return v
	}
	m.Labels = strMap("labels")
	m.Annotations = strMap("annotations")
	if raw := fields["generation"]; raw != nil && string(raw) != "null" {
		if err := json.Unmarshal(raw, &m.Generation); err != nil {
			fe.add(path+".generation", "want an integer")
		}
	}
	if raw := fields["creationTimestamp"]; raw != nil && string(raw) != "null" {
		var ts string
		if err := json.Unmarshal(raw, &ts); err != nil {
			fe.add(path+".creationTimestamp", "want an RFC 3339 time")
		} else if t, err := time.Parse(time.RFC3339, ts); err != nil {
			fe.add(path+".creationTimestamp", "want an RFC 3339 time: %v", err)
		} else {
			m.CreationTimestamp = t
		}
	}
	if m.Namespace == "" {
		m.Namespace = DefaultNamespace
	}
	validateMeta(m, path, fe)
}

// document is one YAML document of a multi-document input.
type document struct {
	index int // 1-based, counting non-empty documents
	line  int // 1-based line of the document's first line of content
	data  []byte
}

// splitDocuments splits a YAML stream at "---" (and "...") marker lines.
// Documents holding only blank lines and comments are dropped and not
// counted, so "document 3" is the third document a reader sees.
func splitDocuments(data []byte) []document {
	var (
		docs      []document
		start     = 0
		firstLine = 1
	)
	emit := func(end int) {
		d := data[start:end]
		if skipped, ok := contentLine(d); ok {
			docs = append(docs, document{index: len(docs) + 1, line: firstLine + skipped, data: d})
		}
	}
	line := 1
	for pos := 0; pos < len(data); line++ {
		end := bytes.IndexByte(data[pos:], '\n')
		next := len(data)
		if end >= 0 {
			end += pos
			next = end + 1
		} else {
			end = len(data)
		}
		l := bytes.TrimRight(data[pos:end], "\r")
		if isSeparator(l, "---") || isSeparator(l, "...") {
			emit(pos)
			start, firstLine = next, line+1
		}
		pos = next
	}
	emit(len(data))
	return docs
}

// contentLine returns how many lines of a YAML document come before its
// first line that is not blank or a comment, and false if there is none.
func contentLine(d []byte) (int, bool) {
	for n := 0; len(d) > 0; n++ {
		l := d
		if i := bytes.IndexByte(d, '\n'); i >= 0 {
			l, d = d[:i], d[i+1:]
		} else {
			d = nil
		}
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			return n, true
		}
	}
	return 0, false
}

// isSeparator reports whether line is the marker, alone or followed by
// whitespace or a comment.
func isSeparator(line []byte, marker string) bool {
	if !bytes.HasPrefix(line, []byte(marker)) {
		return false
	}
	rest := bytes.TrimSpace(line[len(marker):])
	return len(rest) == 0 || rest[0] == '#'
}
