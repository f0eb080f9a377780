#!/usr/bin/env bash
# Measures the CA end to end on this machine: starts "castellan ca" with
# offline JWT authentication (cached), then drives it with "castellan bench
# ca" from a second process over gRPC+TLS. Prints CSR/s, latency
# percentiles, the CA's CPU per SVID against the crypto floor measured in the
# same run (one P-256 verify + one P-256 sign), the machine load and the
# CA's RSS. The defaults are one cached token and 32 callers over one TLS
# connection. RUNS=n measures n times against the same CA and ends with the
# median CA/floor ratio: on a shared machine one run is not a figure.
#   CONCURRENCY=32 CONNECTIONS=1 TOKENS=1 DURATION=10s RUNS=1 scripts/bench-ca.sh
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/castellan ./cmd/castellan
work=$(mktemp -d)
trap 'kill $ca_pid 2>/dev/null || true; rm -rf "$work"' EXIT
./bin/castellan bench token --out-dir "$work" --count "${TOKENS:-1}" >/dev/null
./bin/castellan ca --data-dir "$work/ca" --grpc-addr 127.0.0.1:25012 --http-addr 127.0.0.1:25014 \
	--token-review=false --jwt-issuer https://bench.castellan.invalid --jwks-file "$work/jwks.json" \
	--log-level warn ${CA_FLAGS:-} &
ca_pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:25014/readyz >/dev/null 2>&1 && break; sleep 0.1; done
runs=${RUNS:-1}
ratios=()
paired=()
busy=()
for i in $(seq "$runs"); do
	[ "$runs" -gt 1 ] && echo "--- run $i of $runs"
	out=$(./bin/castellan bench ca --addr 127.0.0.1:25012 --root-cert "$work/ca/root-cert.pem" --server-name localhost \
		--metrics-url http://127.0.0.1:25014/metrics --token-file "$work/tokens.txt" \
		--concurrency "${CONCURRENCY:-32}" --connections "${CONNECTIONS:-1}" --duration "${DURATION:-10s}" --ca-pid "$ca_pid" ${BENCH_FLAGS:-})
	echo "$out"
	echo "load average  $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
	echo "ca rss        $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$ca_pid/status)"
	ratios+=($(awk '$1 == "CA/floor" && $2 ~ /x$/ {sub("x", "", $2); print $2}' <<<"$out"))
	paired+=($(awk '/^CA\/floor pair/{sub("x", "", $3); print $3}' <<<"$out"))
	busy+=($(awk '/^CA\/busy floor/{sub("x", "", $3); print $3}' <<<"$out"))
done
if [ "$runs" -gt 1 ] && [ "${#ratios[@]}" -gt 0 ]; then
	echo "CA/floor      ${ratios[*]}: median $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{r[NR] = $1} END {print r[int((NR + 1) / 2)]}')x over ${#ratios[@]} runs"
fi
if [ "$runs" -gt 1 ] && [ "${#paired[@]}" -gt 0 ]; then
	echo "CA/floor pair ${paired[*]}: median $(printf '%s\n' "${paired[@]}" | sort -n | awk '{r[NR] = $1} END {print r[int((NR + 1) / 2)]}')x over ${#paired[@]} runs"
fi
if [ "$runs" -gt 1 ] && [ "${#busy[@]}" -gt 0 ]; then
	echo "CA/busy floor ${busy[*]}: median $(printf '%s\n' "${busy[@]}" | sort -n | awk '{r[NR] = $1} END {print r[int((NR + 1) / 2)]}')x over ${#busy[@]} runs"
fi
