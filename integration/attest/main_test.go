package attest_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// The test binary doubles as the workload process: run with helperEnv set,
// it waits for a line on stdin (sent once the test has put it in its
// pod's cgroups), then connects to the socket named there and reports.
const helperEnv = "CASTELLAN_ATTEST_HELPER"

// Helper modes.
const (
	// modeCall makes one gRPC call over the socket and prints its status
	// code and message on one line.
	modeCall = "call"
	// modeConnect opens a plain connection and prints "connected".
	modeConnect = "connect"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

// helper runs in the child process. It stays until its stdin closes, so
// that its pid stays its own until the test is done with it.
func helper(mode string) int {
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return 1
	}
	sock := in.Text()
	switch mode {
	case modeCall:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		defer conn.Close()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		st := status.Convert(err)
		fmt.Printf("%s %s\n", st.Code(), st.Message())
	case modeConnect:
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		defer c.Close()
		fmt.Println("connected")
	default:
		return 2
	}
	for in.Scan() {
	}
	return 0
}
