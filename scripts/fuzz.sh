#!/usr/bin/env bash
# Runs every fuzz target of the project (every `func FuzzXxx` in a _test.go
# file, found by grep so new targets are picked up) for a short time beyond
# its seed corpus (testdata/fuzz/FuzzXxx and f.Add seeds). A failure leaves
# the crashing input in the package's testdata/fuzz/FuzzXxx directory.
# Usage: scripts/fuzz.sh [fuzztime]   (default 10000x; env FUZZTIME works too)
# A count (Nx) rather than a duration: with a duration, Go 1.26's fuzzing
# coordinator can report a spurious "context deadline exceeded" failure when
# the time is up (golang/go#75804, fixed in Go 1.27).
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime="${1:-${FUZZTIME:-10000x}}"
targets=$(grep -rE --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]+' . \
  | grep -v '^./\.' | sed -E 's|^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]+)$|\1 \2|' | sort -u)
if [ -z "$targets" ]; then
  echo "fuzz.sh: no fuzz targets found" >&2
  exit 1
fi

failed=()
count=0
while read -r dir target; do
  count=$((count + 1))
  echo "== fuzz ./$dir $target ($fuzztime)"
  if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "./$dir"; then
    failed+=("./$dir $target")
  fi
done <<< "$targets"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: ${#failed[@]} of $count targets failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "fuzz.sh: all $count targets passed"
