#!/usr/bin/env bash
# Installs the Go tools the lint target needs into bin/tools, from the module
# proxy at exact versions (the proxy refuses version lists for some modules).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin/tools
if [ ! -x bin/tools/staticcheck ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && go mod init tools >/dev/null 2>&1 &&
    go get "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION:-v0.7.0}" >/dev/null 2>&1 &&
    go build -o "$OLDPWD/bin/tools/staticcheck" honnef.co/go/tools/cmd/staticcheck)
fi
