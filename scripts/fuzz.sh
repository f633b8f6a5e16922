#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each (default 30s).
# Crashers land in the package's testdata/fuzz and become regression seeds.
set -euo pipefail
t=${1:-30s}
cd "$(dirname "$0")/.."
for pkg in $(go list ./...); do
  for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz $pkg $target ($t)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$t" "$pkg" >/tmp/engram-fuzz.log 2>&1 || { cat /tmp/engram-fuzz.log; exit 1; }
  done
done
echo "fuzz: all targets passed"
