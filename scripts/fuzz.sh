#!/usr/bin/env bash
# Runs every fuzz target for the given time each (default 60s) and prints a
# line per target with what go test reported.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-60s}
for pkg in . ./protocols ./propagate ./review ./search ./delivery; do
  for f in $(go test "$pkg" -list '^Fuzz' | grep '^Fuzz'); do
    echo "== $pkg $f ($t)"
    go test "$pkg" -run '^$' -fuzz "^$f\$" -fuzztime "$t" -parallel 2 2>&1 | tail -3
  done
done
