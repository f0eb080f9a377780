package authn

import (
	"context"
	"testing"
)

func TestByIssuer(t *testing.T) {
	k8s := &countingAuth{caller: Caller{Namespace: "k8s", ServiceAccount: "sa"}}
	offline := &countingAuth{caller: Caller{Namespace: "offline", ServiceAccount: "sa"}}
	tests := []struct {
		name     string
		fallback Authenticator
		token    string
		want     Caller
		reason   Reason
	}{
		{name: "configured issuer", fallback: k8s, token: fakeJWT(`{"iss":"https://offline"}`), want: offline.caller},
		{name: "other issuer", fallback: k8s, token: fakeJWT(`{"iss":"https://kubernetes.default.svc"}`), want: k8s.caller},
		{name: "no issuer", fallback: k8s, token: fakeJWT(`{}`), want: k8s.caller},
		{name: "unknown issuer without fallback", token: fakeJWT(`{"iss":"https://evil"}`), reason: ReasonInvalid},
		{name: "malformed", fallback: k8s, token: "garbage", reason: ReasonMalformed},
		{name: "empty", fallback: k8s, token: "", reason: ReasonNoToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewByIssuer(map[string]Authenticator{"https://offline": offline}, tt.fallback)
			got, err := r.Authenticate(context.Background(), tt.token)
			checkOutcome(t, got, err, tt.want, tt.reason)
		})
	}
}
