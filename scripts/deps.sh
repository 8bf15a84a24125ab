#!/usr/bin/env bash
# Installs the Debian packages the tests and checks need: Chromium (the
# console's browser test), PlantUML and Graphviz (make diagrams) and
# Prometheus's promtool (the alert rules). Each is installed only when its
# command is missing; CI runs this first, as root, on a clean machine.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v plantuml >/dev/null 2>&1 || need+=(plantuml)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# PlantUML measures text with the fonts it finds: pin one so renders match.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "scripts/deps.sh: as root, run: apt-get install -y --no-install-recommends ${need[*]}" >&2
    [ $soft -eq 1 ] && exit 0
    exit 1
  fi
fi
echo "scripts/deps.sh: installing ${need[*]}" >&2
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
  echo "scripts/deps.sh: could not install ${need[*]}" >&2
  [ $soft -eq 1 ] && exit 0
  exit 1
fi
