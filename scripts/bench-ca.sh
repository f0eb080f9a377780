#!/usr/bin/env bash
# Measures the CA end to end on this machine: starts "castellan ca" with
# offline JWT authentication (cached), then drives it with "castellan bench
# ca" from a second process over gRPC+TLS. Prints CSR/s, latency
# percentiles and the CA's RSS.
#   CONCURRENCY=64 CONNECTIONS=4 DURATION=10s scripts/bench-ca.sh
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/castellan ./cmd/castellan
work=$(mktemp -d)
trap 'kill $ca_pid 2>/dev/null || true; rm -rf "$work"' EXIT
./bin/castellan bench token --out-dir "$work" --count "${TOKENS:-100}" >/dev/null
./bin/castellan ca --data-dir "$work/ca" --grpc-addr 127.0.0.1:25012 --http-addr 127.0.0.1:25014 \
	--token-review=false --jwt-issuer https://bench.castellan.invalid --jwks-file "$work/jwks.json" \
	--log-level warn ${CA_FLAGS:-} &
ca_pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:25014/readyz >/dev/null 2>&1 && break; sleep 0.1; done
./bin/castellan bench ca --addr 127.0.0.1:25012 --root-cert "$work/ca/root-cert.pem" --server-name localhost \
	--metrics-url http://127.0.0.1:25014/metrics --token-file "$work/tokens.txt" \
	--concurrency "${CONCURRENCY:-64}" --connections "${CONNECTIONS:-4}" --duration "${DURATION:-10s}"
echo "ca rss        $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$ca_pid/status)"
