package main

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string // in stderr
		stdout   string
	}{
		{name: "help", args: []string{"-h"}, code: 0, stdout: "Usage:\n  castellan-agent [flags]"},
		{name: "long help", args: []string{"--help"}, code: 0, stdout: "--ca-addr"},
		{name: "unknown flag", args: []string{"--bogus"}, code: 2, contains: "castellan-agent: unknown flag: --bogus\nRun 'castellan-agent --help' for usage.\n"},
		{name: "single-dash long flag", args: []string{"-socket-mode=0777"}, code: 2, contains: "castellan-agent: --socket-mode 0777 lets any user"},
		{name: "bad socket mode", args: []string{"--socket-mode=0777"}, code: 2, contains: "castellan-agent: --socket-mode 0777 lets any user"},
		{name: "positional argument", args: []string{"agent"}, code: 2, contains: `castellan-agent: unexpected argument "agent"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.contains) || !strings.Contains(stdout.String(), tt.stdout) {
				t.Fatalf("exit %d, want %d; stderr lacks %q or stdout %q:\n%s\n%s", code, tt.code, tt.contains, tt.stdout, stderr.String(), stdout.String())
			}
			if tt.contains != "" && strings.Count(stderr.String(), tt.contains) != 1 {
				t.Errorf("the error is printed more than once:\n%s", stderr.String())
			}
		})
	}
}

// TestLinksOnlyTheAgent checks that the slim binary stays slim: none of
// the CA, the policy translator, the key-management backends, or (with the
// image's grpcnotrace tag) gRPC's request tracing. Of Kubernetes it links
// only what node attestation's watch on the node's pods needs: the REST
// client, the informer, kubeconfig loading and apimachinery; no clientset,
// no generated API types, no listers or other informers.
func TestLinksOnlyTheAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-tags", "grpcnotrace", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/hashicorp/",
		"github.com/castellan-mesh/castellan/authz",
		"github.com/castellan-mesh/castellan/kms",
		"github.com/castellan-mesh/castellan/ca/server",
		"github.com/castellan-mesh/castellan/ca/material",
		"github.com/castellan-mesh/castellan/ca/upstream",
		"github.com/castellan-mesh/castellan/ca/authn",
		"github.com/envoyproxy/go-control-plane/envoy/config/rbac",
		"golang.org/x/net/trace",
		"html/template",
	}
	// Kubernetes packages are refused unless they are under one of these.
	allowedK8s := []string{
		"k8s.io/apimachinery/",
		"k8s.io/client-go/rest",
		"k8s.io/client-go/tools/cache",
		"k8s.io/client-go/tools/pager",
		"k8s.io/client-go/tools/metrics",
		"k8s.io/client-go/tools/auth",
		"k8s.io/client-go/tools/clientcmd",
		"k8s.io/client-go/transport",
		"k8s.io/client-go/plugin/pkg/client/auth/exec",
		"k8s.io/client-go/pkg/",
		"k8s.io/client-go/features",
		"k8s.io/client-go/util/",
		"k8s.io/klog/",
		"k8s.io/utils/",
		"k8s.io/kube-openapi/pkg/util",
	}
	// Of the CA's packages the agent links only its client and the
	// generated API it speaks.
	allowedCA := []string{
		"github.com/castellan-mesh/castellan/ca/caclient",
		"github.com/castellan-mesh/castellan/ca/jwtapi",
	}
	deps := strings.Fields(string(out))
	for _, dep := range deps {
		if (dep == "github.com/castellan-mesh/castellan/ca" || strings.HasPrefix(dep, "github.com/castellan-mesh/castellan/ca/")) && !slices.Contains(allowedCA, dep) {
			t.Errorf("castellan-agent links %s, a package of the CA", dep)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("castellan-agent links %s", dep)
			}
		}
		if strings.HasPrefix(dep, "k8s.io/") && !slices.ContainsFunc(allowedK8s, func(p string) bool { return strings.HasPrefix(dep, p) }) {
			t.Errorf("castellan-agent links %s, beyond what the pod watch needs", dep)
		}
	}
	for _, want := range []string{"github.com/castellan-mesh/castellan/agent", "github.com/castellan-mesh/castellan/agent/attest"} {
		if !slices.Contains(deps, want) {
			t.Fatalf("go list -deps does not list %s:\n%s", want, out)
		}
	}
}
