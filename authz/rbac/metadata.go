package rbac

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// RequestAuth is the result of request (JWT) authentication as the
// generated matchers read it.
type RequestAuth struct {
	// Principal is "<iss>/<sub>"; it sets the iss and sub claims.
	Principal string
	// Audiences sets the aud claim.
	Audiences []string
	// Presenter sets the azp claim.
	Presenter string
	// Claims maps other claim names to their values: a string, a []string,
	// or a map[string]any of the same form for a nested claim.
	Claims map[string]any
}

// Metadata returns the dynamic metadata, by filter name, that Envoy's JWT
// filter (JWTFilter) writes for a token with these claims when its provider
// has payload_in_metadata: "payload" (JWTPayload). It returns nil when no
// token was authenticated.
func (a RequestAuth) Metadata() (map[string]*structpb.Struct, error) {
	payload := map[string]*structpb.Value{}
	if len(a.Claims) > 0 {
		c, err := claimStruct(a.Claims, 0)
		if err != nil {
			return nil, err
		}
		payload = c.Fields
	}
	if a.Principal != "" {
		iss, sub := a.Principal, ""
		if i := strings.LastIndex(a.Principal, "/"); i >= 0 {
			iss, sub = a.Principal[:i], a.Principal[i+1:]
		}
		payload["iss"] = structpb.NewStringValue(iss)
		payload["sub"] = structpb.NewStringValue(sub)
	}
	if a.Presenter != "" {
		payload["azp"] = structpb.NewStringValue(a.Presenter)
	}
	if len(a.Audiences) == 1 {
		payload["aud"] = structpb.NewStringValue(a.Audiences[0]) // JWTs carry one audience as a string
	} else if len(a.Audiences) > 1 {
		payload["aud"] = stringList(a.Audiences)
	}
	if len(payload) == 0 {
		return nil, nil
	}
	return map[string]*structpb.Struct{JWTFilter: {Fields: map[string]*structpb.Value{
		JWTPayload: structpb.NewStructValue(&structpb.Struct{Fields: payload}),
	}}}, nil
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
			s.Fields[k] = structpb.NewStringValue(x)
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
