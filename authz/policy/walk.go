package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/castellan-mesh/castellan/internal/clip"
)

// maxDepth bounds the nesting the JSON walk follows; the policy types are
// far shallower, so anything deeper is hostile.
const maxDepth = 32

// checkJSON walks the JSON value raw against the message descriptor md and
// reports, with its path, every unknown field, every value of the wrong
// type and every unknown enum name. protojson rejects the same inputs but
// does not say where; this walk does.
func checkJSON(md protoreflect.MessageDescriptor, raw []byte, path string, fe *fieldErrors) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		fe.add(path, "invalid JSON: %v", err)
		return
	}
	checkMessage(md, v, path, fe, 0)
}

func checkMessage(md protoreflect.MessageDescriptor, v any, path string, fe *fieldErrors, depth int) {
	if v == nil {
		return
	}
	if depth > maxDepth {
		fe.add(path, "nested too deeply")
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		fe.add(path, "want an object, got %s", jsonType(v))
		return
	}
	oneofs := map[protoreflect.FullName]string{}
	for _, k := range sortedKeys(obj) {
		val := obj[k]
		p := path + "." + k
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			fe.add(p, "unknown field %q", k)
			continue
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && val != nil {
			if prev, dup := oneofs[od.FullName()]; dup {
				fe.add(p, "cannot be set together with %s", prev)
			}
			oneofs[od.FullName()] = k
		}
		switch {
		case fd.IsList():
			if val == nil {
				continue
			}
			list, ok := val.([]any)
			if !ok {
				fe.add(p, "want a list, got %s", jsonType(val))
				continue
			}
			for i, item := range list {
				checkSingular(fd, item, fmt.Sprintf("%s[%d]", p, i), fe, depth+1)
			}
		case fd.IsMap():
			if val == nil {
				continue
			}
			m, ok := val.(map[string]any)
			if !ok {
				fe.add(p, "want a map, got %s", jsonType(val))
				continue
			}
			for _, mk := range sortedKeys(m) {
				mp := fmt.Sprintf("%s[%s]", p, mk)
				checkMapKey(fd.MapKey(), mk, mp, fe)
				checkSingular(fd.MapValue(), m[mk], mp, fe, depth+1)
			}
		default:
			checkSingular(fd, val, p, fe, depth+1)
		}
	}
}

func checkMapKey(fd protoreflect.FieldDescriptor, k, path string, fe *fieldErrors) {
	switch fd.Kind() {
	case protoreflect.StringKind:
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		if _, err := strconv.ParseUint(k, 10, 32); err != nil {
			fe.add(path, "key %q is not an unsigned 32-bit integer", k)
		}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		if _, err := strconv.ParseInt(k, 10, 32); err != nil {
			fe.add(path, "key %q is not a 32-bit integer", k)
		}
	case protoreflect.BoolKind:
		if k != "true" && k != "false" {
			fe.add(path, "key %q is not true or false", k)
		}
	default:
		if _, err := strconv.ParseInt(k, 10, 64); err != nil {
			fe.add(path, "key %q is not an integer", k)
		}
	}
}

func checkSingular(fd protoreflect.FieldDescriptor, v any, path string, fe *fieldErrors, depth int) {
	if v == nil {
		return // protojson treats null as the default value
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if fd.Message().FullName().Parent() == "google.protobuf" {
			return // well-known types have their own JSON forms; protojson checks them
		}
		checkMessage(fd.Message(), v, path, fe, depth)
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			fe.add(path, "want a string, got %s", jsonType(v))
		}
	case protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			fe.add(path, "want base64 bytes, got %s", jsonType(v))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			fe.add(path, "want true or false, got %s", jsonType(v))
		}
	case protoreflect.EnumKind:
		ed := fd.Enum()
		switch x := v.(type) {
		case string:
			if ed.Values().ByName(protoreflect.Name(x)) == nil {
				fe.add(path, "unknown value %q (want one of %s)", x, enumNames(ed))
			}
		case json.Number:
			n, err := x.Int64()
			if err != nil || n < math.MinInt32 || n > math.MaxInt32 || ed.Values().ByNumber(protoreflect.EnumNumber(n)) == nil {
				fe.add(path, "unknown value %s (want one of %s)", x, enumNames(ed))
			}
		default:
			fe.add(path, "want one of %s, got %s", enumNames(ed), jsonType(v))
		}
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		checkInt(v, path, 0, math.MaxUint32, fe)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		checkInt(v, path, math.MinInt32, math.MaxInt32, fe)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		switch v.(type) {
		case json.Number, string:
		default:
			fe.add(path, "want an integer, got %s", jsonType(v))
		}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		switch v.(type) {
		case json.Number, string:
		default:
			fe.add(path, "want a number, got %s", jsonType(v))
		}
	}
}

func checkInt(v any, path string, lo, hi int64, fe *fieldErrors) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = x // protojson accepts integers as strings
	default:
		fe.add(path, "want an integer, got %s", jsonType(v))
		return
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		fe.add(path, "want an integer from %d to %d, got %s", lo, hi, s)
	}
}

func enumNames(ed protoreflect.EnumDescriptor) string {
	var b bytes.Buffer
	for i := 0; i < ed.Values().Len(); i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(ed.Values().Get(i).Name()))
	}
	return b.String()
}

func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "the number " + x.String()
	case string:
		return fmt.Sprintf("the string %q", clip.String(x, 40))
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
