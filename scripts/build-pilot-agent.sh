#!/usr/bin/env bash
# Builds Istio's pilot-agent (a real client of Istio's CA API) once into the
# cache, from the pinned tools module in tools/pilot-agent.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${CASTELLAN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/castellan}"
out="$cache/pilot-agent-eed52ebb/pilot-agent"
if [ -x "$out" ]; then
	echo "pilot-agent: cached at $out"
	exit 0
fi
mkdir -p "$(dirname "$out")"
echo "pilot-agent: building (a few minutes on a cold cache)"
cd tools/pilot-agent
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$out.tmp" istio.io/istio/pilot/cmd/pilot-agent
mv "$out.tmp" "$out"
echo "pilot-agent: built $out"
