package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRemoteClusterFlag(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []remoteCluster
		errMsg string // in the error of the last value
	}{
		{name: "one", values: []string{"east=/k/east"}, want: []remoteCluster{{"east", "/k/east"}}},
		{name: "two", values: []string{"east=/k/east", "west=/k/west"}, want: []remoteCluster{{"east", "/k/east"}, {"west", "/k/west"}}},
		{name: "path with =", values: []string{"east=/k/a=b"}, want: []remoteCluster{{"east", "/k/a=b"}}},
		{name: "no path", values: []string{"east"}, errMsg: "want ID=KUBECONFIG"},
		{name: "empty path", values: []string{"east="}, errMsg: "want ID=KUBECONFIG"},
		{name: "empty ID", values: []string{"=/k/east"}, errMsg: "want ID=KUBECONFIG"},
		{name: "twice", values: []string{"east=/a", "east=/b"}, errMsg: "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c clusterFlags
			var err error
			for _, v := range tt.values {
				if err = c.addRemote(v); err != nil {
					break
				}
			}
			if tt.errMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errMsg) {
					t.Fatalf("err = %v, want one with %q", err, tt.errMsg)
				}
				return
			}
			if err != nil || len(c.remote) != len(tt.want) {
				t.Fatalf("remote = %v, %v; want %v", c.remote, err, tt.want)
			}
			for i := range tt.want {
				if c.remote[i] != tt.want[i] {
					t.Fatalf("remote = %v, want %v", c.remote, tt.want)
				}
			}
		})
	}
}

// Bad cluster flags are usage errors found before any cluster is asked.
func TestClusterAuthenticatorUsage(t *testing.T) {
	tests := []struct {
		name   string
		flags  caFlags
		errMsg string
	}{
		{name: "remote named as local", errMsg: "is the local cluster",
			flags: caFlags{tokenReview: true, clusters: clusterFlags{localID: "Kubernetes", remote: []remoteCluster{{"Kubernetes", "/k"}}}}},
		{name: "remote without TokenReview", errMsg: "--remote-cluster needs --token-review",
			flags: caFlags{jwtIssuer: "https://issuer.test", clusters: clusterFlags{localID: "Kubernetes", remote: []remoteCluster{{"east", "/k"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &caDeps{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()}
			_, err := tt.flags.clusterAuthenticator(context.Background(), d)
			var usage usageError
			if !errors.As(err, &usage) || !strings.Contains(err.Error(), tt.errMsg) {
				t.Fatalf("err = %v, want a usage error with %q", err, tt.errMsg)
			}
		})
	}
}
