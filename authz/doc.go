// Package authz computes, for every workload, the Envoy configuration that
// enforces the mesh's Istio security policies.
//
// The pieces, one concept per package:
//
//   - policy decodes AuthorizationPolicy and PeerAuthentication YAML or
//     JSON (security.istio.io v1 and v1beta1) strictly, validates it and
//     reports every problem with its file, document and field path; it also
//     decides which workloads a policy selects.
//   - rbac translates an AuthorizationPolicy into Envoy RBAC policies
//     (envoy.filters.http.rbac and envoy.filters.network.rbac) with Istio's
//     semantics, and assembles a workload's filters: AUDIT, DENY, ALLOW.
//   - mtls resolves a workload's effective mTLS mode per port from
//     PeerAuthentications and renders it as Envoy filter chains with a
//     DownstreamTlsContext fed by SDS.
//   - envoyrbac evaluates generated RBAC filters against a request with
//     Envoy's semantics; "castellan authz check" decides with it, so a check
//     tests the translation.
//   - watch feeds an Engine from a live cluster with client-go informers.
//
// The Engine in this package ties them together incrementally: each policy
// is translated (and its Envoy policies encoded and validated) once; an
// index of workloads by namespace, label and service finds the workloads a
// changed policy applies to before and after the change; only those are
// recomputed, by concatenating the already-encoded policies.
//
// Bad policies fail closed, never open. A policy that fails validation is
// enforced in its fail-closed form (see policy.Resource.FailClosedNote): an
// invalid ALLOW policy allows nothing, an invalid DENY or AUDIT policy
// denies or audits everything on the workloads it selects, and an invalid
// PeerAuthentication keeps its mode if it can be read, else STRICT. An
// object that cannot even be identified keeps the previous version of the
// policy in force. An AuthorizationPolicy with action CUSTOM, which
// Castellan cannot hand to an ext_authz server, is enforced as DENY. All
// are reported.
package authz
