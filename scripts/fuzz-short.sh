#!/usr/bin/env bash
# Runs every fuzz target in the main module for FUZZTIME (default 5s) each.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-5s}
status=0
while IFS=: read -r file line rest; do
	pkg="./$(dirname "$file")"
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"$rest")
	echo "fuzz: $pkg $name ($fuzztime)"
	if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg"; then
		status=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' --exclude-dir=integration . | sed 's|^\./||')
exit $status
