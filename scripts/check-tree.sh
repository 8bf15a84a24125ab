#!/usr/bin/env bash
# Fails when git tracks a built file: an executable binary (ELF), a Pebble
# store's files (a test that wrote its store into the tree), a test binary or
# a profile. Nothing built is committed (README, "The project's rules").
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  case "$f" in
    *.test|*.prof|*.out|*.sst|*/MANIFEST-[0-9]*|*/OPTIONS-[0-9]*|*/[0-9][0-9][0-9][0-9][0-9][0-9].log)
      echo "check-tree: $f is a built file; remove it with git rm" >&2; bad=1; continue ;;
  esac
  if [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then
    echo "check-tree: $f is a binary; remove it with git rm" >&2; bad=1
  fi
done < <(git ls-files -z)
exit $bad
