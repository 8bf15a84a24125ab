#!/usr/bin/env bash
# Renders every PlantUML source in docs/diagrams/ to SVG beside it.
# With --check, renders to a temporary folder instead and fails when a
# committed SVG differs from its source's render (stale) or is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
for c in plantuml dot; do
  command -v "$c" >/dev/null 2>&1 || { echo "diagrams: $c is missing (scripts/deps.sh installs plantuml and graphviz)" >&2; exit 1; }
done
src=docs/diagrams
out="$PWD/$src"
check=0
if [ "${1:-}" = "--check" ]; then
  check=1
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
# Headless, no metadata: the same source renders to the same bytes.
JAVA_TOOL_OPTIONS="-Djava.awt.headless=true" plantuml -tsvg -nometadata -failfast2 -o "$out" "$src"/*.puml 2> >(grep -v 'Picked up JAVA_TOOL_OPTIONS' >&2)
if [ $check -eq 0 ]; then
  echo "diagrams: rendered $(ls "$src"/*.puml | wc -l) sources to $src/*.svg"
  exit 0
fi
stale=0
for f in "$src"/*.puml; do
  svg="$(basename "${f%.puml}").svg"
  if ! cmp -s "$out/$svg" "$src/$svg"; then
    echo "diagrams: $src/$svg is stale or missing; run make diagrams and commit it" >&2
    stale=1
  fi
done
for svg in "$src"/*.svg; do
  [ -e "${svg%.svg}.puml" ] || { echo "diagrams: $svg has no source" >&2; stale=1; }
done
[ $stale -eq 0 ] && echo "diagrams: every SVG is current"
exit $stale
