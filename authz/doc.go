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
// Two choices keep a bad policy from opening the mesh: a policy whose
// update cannot be read keeps its previous version in force (and is
// reported), and an AuthorizationPolicy with action CUSTOM, which Castellan
// cannot hand to an ext_authz server, is enforced as DENY and reported.
package authz
