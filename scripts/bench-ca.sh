#!/usr/bin/env bash
# Measures the CA end to end on this machine: starts "castellan ca" with
# offline JWT authentication (cached), then drives it with "castellan bench
# ca" from a second process over gRPC+TLS. Prints CSR/s, latency
# percentiles, the CA's CPU per SVID against the crypto floor measured in the
# same run (one P-256 verify + one P-256 sign), the machine load (the share
# of the machine's CPU time that went to other processes during the run,
# and the load average) and the CA's RSS. The defaults are one cached
# token and 32 callers over one TLS connection. RUNS=n measures n times
# against the same CA and ends with the median CA/floor ratio: on a shared
# machine one run is not a figure.
#   CONCURRENCY=32 CONNECTIONS=1 TOKENS=1 DURATION=10s RUNS=1 scripts/bench-ca.sh
#
# The CA and the load generator run on separate CPUs (taskset): the CA on
# the first half of this machine's CPUs, the load generator on the rest,
# as when the callers are other machines. Sharing the cores, the load
# generator preempts the CA's threads (about one involuntary context switch
# every two SVIDs), and the CA's CPU per SVID then includes that contention.
# The floor is measured on the CA's CPUs. CA_CPUS and LG_CPUS choose the
# CPUs (taskset lists); CA_CPUS=all runs both on every CPU. BIN=path runs
# that build of castellan instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
	go build -o bin/castellan ./cmd/castellan
	BIN=./bin/castellan
fi
span() { if [ "$1" -eq "$2" ]; then echo "$1"; else echo "$1-$2"; fi; }
n=$(nproc)
ca_cpus=${CA_CPUS:-$([ "$n" -ge 2 ] && span 0 $((n / 2 - 1)) || echo all)}
lg_cpus=${LG_CPUS:-$([ "$n" -ge 2 ] && span $((n / 2)) $((n - 1)) || echo all)}
if [ "$ca_cpus" = all ]; then lg_cpus=all; fi
# on CPUS command...: runs the command on CPUS ("all": anywhere), in the
# place of the calling (sub)shell, so that $! of "on ... &" is its pid.
on() {
	local cpus=$1
	shift
	if [ "$cpus" = all ]; then exec "$@"; else exec taskset -c "$cpus" "$@"; fi
}
echo "cpus          CA on ${ca_cpus}, load generator on ${lg_cpus}, of ${n}"
work=$(mktemp -d)
trap 'kill $ca_pid 2>/dev/null || true; rm -rf "$work"' EXIT
$BIN bench token --out-dir "$work" --count "${TOKENS:-1}" >/dev/null
on "$ca_cpus" $BIN ca --data-dir "$work/ca" --grpc-addr 127.0.0.1:25012 --http-addr 127.0.0.1:25014 \
	--token-review=false --jwt-issuer https://bench.castellan.invalid --jwks-file "$work/jwks.json" \
	--log-level warn ${CA_FLAGS:-} &
ca_pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:25014/readyz >/dev/null 2>&1 && break; sleep 0.1; done
runs=${RUNS:-1}
ratios=()
paired=()
inter=()
busy=()
other=()
for i in $(seq "$runs"); do
	[ "$runs" -gt 1 ] && echo "--- run $i of $runs"
	out=$(on "$lg_cpus" $BIN bench ca --addr 127.0.0.1:25012 --root-cert "$work/ca/root-cert.pem" --server-name localhost \
		--metrics-url http://127.0.0.1:25014/metrics --token-file "$work/tokens.txt" \
		--concurrency "${CONCURRENCY:-32}" --connections "${CONNECTIONS:-1}" --duration "${DURATION:-10s}" --ca-pid "$ca_pid" ${BENCH_FLAGS:-})
	echo "$out"
	echo "load average  $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
	echo "ca rss        $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$ca_pid/status)"
	ratios+=($(awk '$1 == "CA/floor" && $2 ~ /x$/ {sub("x", "", $2); print $2}' <<<"$out"))
	paired+=($(awk '/^CA\/floor pair/{sub("x", "", $3); print $3}' <<<"$out"))
	inter+=($(sed -n 's/^CA\/floor pair.*; \([0-9.]*\)x over them all.*/\1/p' <<<"$out"))
	busy+=($(awk '/^CA\/busy floor/{sub("x", "", $3); print $3}' <<<"$out"))
	other+=($(awk '/^other work/{print $3}' <<<"$out"))
done
# summary LABEL TEXT VALUES...: with more than one run, prints the values
# and their median.
summary() {
	local label=$1 text=$2
	shift 2
	[ "$runs" -gt 1 ] && [ $# -gt 0 ] || return 0
	echo "$label $*: median $(printf '%s\n' "$@" | sort -n | awk '{r[NR] = $1} END {print r[int((NR + 1) / 2)]}')x over $# runs$text"
}
summary "CA/floor     " "" ${ratios[@]+"${ratios[@]}"}
summary "CA/floor pair" "" ${paired[@]+"${paired[@]}"}
summary "CA/floor all " " (each over all its slices)" ${inter[@]+"${inter[@]}"}
summary "CA/busy floor" "" ${busy[@]+"${busy[@]}"}
if [ "$runs" -gt 1 ] && [ "${#other[@]}" -gt 0 ]; then
	echo "other work    ${other[*]}: each run's share of the machine's CPU time that went to other processes"
fi
