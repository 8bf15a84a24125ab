#!/usr/bin/env bash
# Installs the Debian packages the tests and checks need: Chromium (the
# console's browser test), PlantUML and Graphviz (make diagrams) and
# Prometheus's promtool (the alert rules). Each is installed only when its
# command is missing; CI runs this first, as root, on a clean machine.
# Before installing anything it says which packages and why, one line each.
#
# --soft (make test): when they cannot be installed (not root and no sudo,
# or apt-get fails), say so and exit 0; the tests that need them skip.
set -euo pipefail
soft=0
[ "${1:-}" = "--soft" ] && soft=1

need=()
why=()
want() { need+=("$1"); why+=("$2"); }
command -v chromium >/dev/null 2>&1 || want chromium "headless browser for the console's test (node/consoletest)"
command -v plantuml >/dev/null 2>&1 || want plantuml "renders docs/diagrams/*.puml to SVG (make diagrams, check-diagrams)"
command -v dot >/dev/null 2>&1 || want graphviz "layout engine PlantUML calls for its diagrams"
command -v promtool >/dev/null 2>&1 || want prometheus "promtool: checks and unit-tests docs/ops/alerts.yml (make check-ops)"
# PlantUML measures text with the fonts it finds: pin one so renders match.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || want fonts-dejavu-core "the font PlantUML measures text with, so SVGs render the same everywhere"
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

say() { echo "scripts/deps.sh: $*" >&2; }
list() {
  for i in "${!need[@]}"; do
    printf '  %-18s %s\n' "${need[$i]}" "${why[$i]}" >&2
  done
}

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    say "these Debian packages are missing:"
    list
    say "as root, run: apt-get install -y --no-install-recommends ${need[*]}"
    [ $soft -eq 1 ] && exit 0
    exit 1
  fi
fi
say "installing ${#need[@]} Debian package(s) with ${sudo:+sudo }apt-get (apt-get update first):"
list
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
  say "could not install ${need[*]}"
  [ $soft -eq 1 ] && exit 0
  exit 1
fi
say "installed ${need[*]}"
