#!/usr/bin/env bash
# Installs the js-libp2p peer of the interop test (interop/js) from its
# lockfile with `npm ci`, unless node_modules already holds exactly that
# lockfile's packages. The Go test in interop/ runs it first.
#
# Exit 0: installed or up to date. Exit 3: Node.js 20 or later, or npm, is
# not on this machine (the test skips, saying so). Any other exit: npm ci
# failed (the test fails with this script's output).
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/interop/js"
say() { echo "scripts/interop.sh: $*" >&2; }

if ! command -v node >/dev/null 2>&1; then
  say "node is not installed: the js-libp2p interop peer needs Node.js 20 or later"
  exit 3
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  say "node $(node --version) is older than 20: the js-libp2p interop peer needs Node.js 20 or later"
  exit 3
fi
if ! command -v npm >/dev/null 2>&1; then
  say "npm is not installed: it installs the js-libp2p interop peer's packages"
  exit 3
fi

# A stamp of the lockfile npm ci last installed.
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
stamp="$dir/node_modules/.ferry-lockfile.sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
say "installing interop/js from package-lock.json (npm ci)"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
echo "$want" >"$stamp"
