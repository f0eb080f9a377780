// Package source loads the certificate material that package inspect
// analyses, from every place a mesh certificate lives: a file or stdin (PEM or
// DER), a Kubernetes Secret, a live SDS socket, a live SPIFFE Workload API
// socket, and a TLS endpoint. It also loads the trust bundle to verify against
// and a private key to match.
//
// Each loader returns an inspect.Input. Only the public half of a private key
// is kept; private keys are never logged or returned.
package source
