// Package jwtapi is the generated Go code of Castellan's JWT-SVID
// extension of the CA API (proto/castellan/ca/v1/jwt.proto): the service
// castellan.ca.v1.JWTService, which signs JWT-SVIDs for proven callers and
// publishes the keys that verify them. Regenerate it with
// scripts/gen-proto.sh.
package jwtapi
