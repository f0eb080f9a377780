#!/usr/bin/env bash
# Measures the node agent's SDS fan-out on this machine: starts "castellan
# ca" (offline JWT authentication) and the slim agent binary castellan-agent,
# built as the image builds it (static, stripped, -tags grpcnotrace), then
# opens STREAMS Envoy-like SDS streams from a second process with "castellan
# bench sds", rotates ROTATIONS times (SIGHUP to the agent) and prints the
# time from each rotation to the last stream, the agent's peak RSS (VmHWM,
# and its anonymous and file-backed parts sampled every 50 ms) and its CPU
# per rotation.
#
#   STREAMS=1000 ROTATIONS=5 DELTA=false scripts/bench-sds.sh
#
# AGENT_FLAGS adds flags to the agent (--pprof to profile it);
# AGENT="bin/castellan agent" measures the all-in-one binary instead.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/castellan ./cmd/castellan
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -tags grpcnotrace -o bin/castellan-agent ./cmd/castellan-agent
work=$(mktemp -d)
ca_pid=""
agent_pid=""
trap 'kill $agent_pid $ca_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
./bin/castellan bench token --out-dir "$work" --count 1 >/dev/null
head -n1 "$work/tokens.txt" >"$work/token"
./bin/castellan ca --data-dir "$work/ca" --grpc-addr 127.0.0.1:25022 --http-addr 127.0.0.1:25024 \
	--token-review=false --jwt-issuer https://bench.castellan.invalid --jwks-file "$work/jwks.json" \
	--log-level warn &
ca_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:25024/readyz >/dev/null 2>&1 && break; sleep 0.1; done
ulimit -n 65536 2>/dev/null || true
agent=${AGENT:-./bin/castellan-agent}
echo "agent            ${agent%% *}, $(stat -c %s "${agent%% *}" | awk '{printf "%.1f MB", $1/1e6}'), load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
# shellcheck disable=SC2086 # AGENT and AGENT_FLAGS are word lists.
$agent --ca-addr 127.0.0.1:25022 --ca-server-name localhost \
	--root-cert "$work/ca/root-cert.pem" --token-file "$work/token" \
	--sds-socket "$work/sds/socket" --http-addr 127.0.0.1:25020 --log-level warn ${AGENT_FLAGS:-} &
agent_pid=$!
# The kernel keeps only the peak of the total (VmHWM): sample the parts.
(peak_anon=0; peak_file=0; while sleep 0.05; do
	read -r anon file < <(awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{print a+0, f+0}' /proc/$agent_pid/status 2>/dev/null) || break
	[ -n "$anon" ] && [ "$anon" -gt 0 ] || break
	[ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
	[ "$file" -gt "$peak_file" ] && peak_file=$file
	echo "$peak_anon $peak_file" >"$work/peak"
done) &
for _ in $(seq 100); do curl -sf http://127.0.0.1:25020/readyz >/dev/null 2>&1 && break; sleep 0.1; done
./bin/castellan bench sds --sds-socket "$work/sds/socket" --agent-pid "$agent_pid" \
	--metrics-url http://127.0.0.1:25020/metrics --streams "${STREAMS:-1000}" \
	--rotations "${ROTATIONS:-5}" --delta="${DELTA:-false}"
grep -E "VmHWM" /proc/$agent_pid/status | sed "s/^/agent /"
awk '{printf "agent peak RssAnon %6d kB, peak RssFile %6d kB (sampled every 50 ms)\n", $1, $2}' "$work/peak"
echo "load average     $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) on $(nproc) cores"
