#!/usr/bin/env bash
# Runs every fuzz target in the main module for FUZZTIME (default 5s) each.
# A target fails only on a real finding (a failing input is written to
# testdata/fuzz). Go's fuzzing coordinator can also stop with "context
# deadline exceeded" when the time runs out while a worker is busy with a
# slow input; that is not a finding, and is reported as such.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-5s}
status=0
while IFS=: read -r file line rest; do
	pkg="./$(dirname "$file")"
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"$rest")
	echo "fuzz: $pkg $name ($fuzztime)"
	out=$(go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" -fuzzminimizetime=2s "$pkg" 2>&1)
	rc=$?
	if [ $rc -eq 0 ]; then
		echo "$out" | tail -n 4
	elif grep -q "context deadline exceeded" <<<"$out" && ! grep -q "Failing input written to" <<<"$out"; then
		echo "fuzz: $pkg $name: the time ran out while a worker was busy (no failing input); not a finding"
	else
		echo "$out"
		status=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' --exclude-dir=integration --exclude-dir=tools . | sed 's|^\./||')
exit $status
