// Package xds serves each proxy its workload's authorization filters over
// xDS: the Extension Config Discovery Service (ECDS), state-of-the-world and
// delta, on go-control-plane's server; and, over LDS, its inbound listener
// (InboundListener), whose filter chains carry the mTLS mode per port of
// its PeerAuthentications and run the network RBAC filters from ECDS.
//
// # Resources
//
// Every proxy is served the same six TypedExtensionConfig names, whose
// contents are its own workload's:
//
//	castellan.authz.http.audit      envoy.filters.http.rbac, action LOG
//	castellan.authz.http.deny       envoy.filters.http.rbac, action DENY
//	castellan.authz.http.allow      envoy.filters.http.rbac, action ALLOW
//	castellan.authz.network.audit   envoy.filters.network.rbac, action LOG
//	castellan.authz.network.deny    envoy.filters.network.rbac, action DENY
//	castellan.authz.network.allow   envoy.filters.network.rbac, action ALLOW
//
// A listener lists them in this order (audit, deny, allow) with
// config_discovery. A slot for which no policy applies carries an RBAC
// filter without rules, which enforces nothing, so a listener never waits
// for a config that does not exist. Each resource's version is a hash of
// its bytes: a recomputation that changes nothing sends nothing.
//
// # Proxies
//
// A proxy is identified by its node ID in Istio's form,
// "sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local" (or
// "router~..." for a gateway). Its pod must be known, and the URI SAN of
// its TLS client certificate must be the SPIFFE ID of that pod's service
// account; otherwise the stream is refused with PermissionDenied.
//
// # Pushes, ACK and NACK
//
// A policy or pod change recomputes, in the authz.Engine, only the
// workloads it affects; the server then answers only the watches of those
// workloads' proxies, and only with resources whose bytes changed. A proxy
// that NACKs keeps its last good config: nothing is resent until the
// resource changes again; the NACK is counted and logged.
package xds
