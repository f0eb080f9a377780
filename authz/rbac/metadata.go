package rbac

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"
)

// RequestAuth is the result of request (JWT) authentication as the
// generated request.auth.* matchers read it.
type RequestAuth struct {
	// Principal is "<iss>/<sub>".
	Principal string
	Audiences []string
	// Presenter is the authorized party (azp).
	Presenter string
	// Claims maps a claim name to its values; a nested claim is a
	// map[string]any of the same form. Values are strings or []string.
	Claims map[string]any
}

// Metadata returns the dynamic metadata, by filter name, that request
// authentication writes: under AuthnFilter, MetaPrincipal and MetaPresenter
// as strings, MetaAudiences as a list of strings and MetaClaims as a struct
// of string lists.
func (a RequestAuth) Metadata() (map[string]*structpb.Struct, error) {
	fields := map[string]*structpb.Value{}
	if a.Principal != "" {
		fields[MetaPrincipal] = structpb.NewStringValue(a.Principal)
	}
	if a.Presenter != "" {
		fields[MetaPresenter] = structpb.NewStringValue(a.Presenter)
	}
	if len(a.Audiences) > 0 {
		fields[MetaAudiences] = stringList(a.Audiences)
	}
	if len(a.Claims) > 0 {
		c, err := claimStruct(a.Claims, 0)
		if err != nil {
			return nil, err
		}
		fields[MetaClaims] = structpb.NewStructValue(c)
	}
	if len(fields) == 0 {
		return nil, nil
	}
	return map[string]*structpb.Struct{AuthnFilter: {Fields: fields}}, nil
}

func stringList(vs []string) *structpb.Value {
	l := &structpb.ListValue{}
	for _, v := range vs {
		l.Values = append(l.Values, structpb.NewStringValue(v))
	}
	return structpb.NewListValue(l)
}

func claimStruct(m map[string]any, depth int) (*structpb.Struct, error) {
	if depth > 16 {
		return nil, fmt.Errorf("rbac: claims nested too deeply")
	}
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range m {
		switch x := v.(type) {
		case string:
			s.Fields[k] = stringList([]string{x})
		case []string:
			s.Fields[k] = stringList(x)
		case map[string]any:
			sub, err := claimStruct(x, depth+1)
			if err != nil {
				return nil, err
			}
			s.Fields[k] = structpb.NewStructValue(sub)
		default:
			return nil, fmt.Errorf("rbac: claim %q: unsupported value type %T", k, v)
		}
	}
	return s, nil
}
