#!/usr/bin/env bash
# Builds Istio's own binaries the integration tests run, once each into the
# cache, from the pinned tools module in tools/pilot-agent:
#   pilot-agent      a real client of the CA API (the sidecar's agent);
#   pilot-discovery  istiod, the control plane, run with its CA off.
# With no argument, both. They share most packages, so the second takes
# seconds once the first is built; a cold cache takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=eed52ebb
cache="${CASTELLAN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/castellan}"
[ $# -gt 0 ] || set -- pilot-agent pilot-discovery
for bin in "$@"; do
	case "$bin" in
	pilot-agent | pilot-discovery) ;;
	*) echo "build-istio.sh: unknown binary $bin (want pilot-agent or pilot-discovery)" >&2; exit 2 ;;
	esac
	out="$cache/$bin-$rev/$bin"
	if [ -x "$out" ]; then
		echo "$bin: cached at $out"
		continue
	fi
	mkdir -p "$(dirname "$out")"
	echo "$bin: building (a few minutes on a cold cache)"
	start=$(date +%s)
	(cd tools/pilot-agent && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 go build -o "$out.tmp" "istio.io/istio/pilot/cmd/$bin")
	mv "$out.tmp" "$out"
	echo "$bin: built $out in $(( $(date +%s) - start )) s"
done
