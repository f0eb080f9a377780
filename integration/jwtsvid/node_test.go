package jwtsvid_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/integration/harness"
)

const (
	nodeA     = "node-a"
	nodeB     = "node-b"
	agentNS   = "castellan-system"
	agentSA   = "castellan-agent"
	shopNS    = "shop"
	helperEnv = "CASTELLAN_JWTSVID_TEST_HELPER"
)

// TestNodeAgentJWTSVIDs runs castellan-agent in node mode against a real
// API server and a castellan ca process that lets the agent act for pods
// of its node. Processes put into the real cgroups of real pods ask for
// JWT-SVIDs with go-spiffe's client: a pod of the node gets one for its
// own service account only (verified against the streamed JWT bundle);
// a process of a pod on another node, a process in no pod, and a pod
// asking for another identity get nothing.
func TestNodeAgentJWTSVIDs(t *testing.T) {
	layouts := harness.CgroupLayouts(t)
	api := harness.StartAPIServer(t)
	ctx := context.Background()
	for _, n := range []string{shopNS, agentNS} {
		if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	api.CreateServiceAccount(t, shopNS, "web")
	api.CreateServiceAccount(t, shopNS, "db")
	api.CreateServiceAccount(t, agentNS, agentSA)
	ca := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--node-agent-service-account", agentNS+"/"+agentSA)

	agentPod := api.CreatePod(t, agentNS, "castellan-agent-a", agentSA, nodeA, corev1.PodRunning)
	web := api.CreatePod(t, shopNS, "web-0", "web", nodeA, corev1.PodRunning)
	db := api.CreatePod(t, shopNS, "db-0", "db", nodeB, corev1.PodRunning)
	dir, err := os.MkdirTemp("", "jwtnode")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte(api.PodToken(t, agentPod)), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "socket")
	startAgent(t, ca, tokenFile, socket, "--attestation=node", "--node-name="+nodeA, "--kubeconfig="+api.Kubeconfig)
	harness.WaitFor(t, waitTimeout, "the agent's socket", func() bool { _, err := os.Stat(socket); return err == nil })

	webID := spiffeid.RequireFromSegments(td, "ns", shopNS, "sa", "web")
	dbID := spiffeid.RequireFromSegments(td, "ns", shopNS, "sa", "db")
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		subject string
		want    string
	}{
		{"pod of the node", web, "", "svid " + webID.String()},
		{"pod of the node, its own ID asked", web, webID.String(), "svid " + webID.String()},
		{"pod of the node asking for another identity", web, dbID.String(), "refused PermissionDenied"},
		{"pod of another node", db, "", "refused PermissionDenied"},
		{"no pod", nil, "", "refused PermissionDenied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := runHelper(t, socket, tc.subject, tc.pod, layouts)
			t.Logf("helper: %s", got)
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("helper: %q, want %q", got, tc.want)
			}
		})
	}
}

// runHelper runs the test binary as TestJWTSVIDHelperProcess, in pod's
// container cgroups when pod is set, and returns the line it prints.
func runHelper(t *testing.T, socket, subject string, pod *corev1.Pod, layouts []harness.CgroupLayout) string {
	t.Helper()
	h := harness.StartChild(t, "^TestJWTSVIDHelperProcess$", helperEnv+"=1")
	if pod != nil {
		harness.JoinPodCgroup(t, h.Pid(), string(pod.UID), harness.NewContainerID(t), layouts...)
	}
	h.Send(t, socket+" "+subject)
	return h.Next(t, waitTimeout)
}

// TestJWTSVIDHelperProcess is not a test: runHelper runs it as a workload
// process. It reads "<socket> [<subject>]" on stdin, once it has been put
// in its pod's cgroups, asks the agent for a JWT-SVID for audience
// "node-test" with go-spiffe's client, validates it against the JWT
// bundle from FetchJWTBundles, and prints "svid <id>" or
// "refused <code> <message>".
func TestJWTSVIDHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		os.Exit(1)
	}
	socket, subject, _ := strings.Cut(in.Text(), " ")
	id, err := helperFetchJWT(socket, strings.TrimSpace(subject))
	if err != nil {
		for u := err; u != nil; u = errors.Unwrap(u) {
			if st, ok := status.FromError(u); ok {
				err = st.Err()
				break
			}
		}
		st := status.Convert(err)
		fmt.Printf("refused %s %s\n", st.Code(), st.Message())
	} else {
		fmt.Printf("svid %s\n", id)
	}
	for in.Scan() {
	}
	os.Exit(0)
}

func helperFetchJWT(socket, subject string) (spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return spiffeid.ID{}, err
	}
	defer client.Close()
	params := spiffejwt.Params{Audience: "node-test"}
	if subject != "" {
		if params.Subject, err = spiffeid.FromString(subject); err != nil {
			return spiffeid.ID{}, err
		}
	}
	svid, err := client.FetchJWTSVID(ctx, params)
	if err != nil {
		return spiffeid.ID{}, err
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return spiffeid.ID{}, err
	}
	got, err := spiffejwt.ParseAndValidate(svid.Marshal(), bundles, []string{"node-test"})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("the JWT-SVID does not validate: %w", err)
	}
	return got.ID, nil
}
