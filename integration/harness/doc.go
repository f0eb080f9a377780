// Package harness starts the real servers Castellan's integration tests run
// against, one call each: an in-process Kubernetes API server with embedded
// etcd (StartAPIServer), and the CA wired to it with TokenReview
// authentication (StartCA). Everything started is stopped in t.Cleanup,
// listens on 127.0.0.1 ports chosen by the OS, and keeps its files in
// t.TempDir().
//
// The API server's own logs are discarded; set CASTELLAN_KLOG=1 to see
// them on stderr. The CA's logs go to t.Log.
//
// A test waits for what the servers do in the background with WaitFor or
// WaitForNil, which poll under a limit the test chooses.
package harness
