#!/usr/bin/env bash
# make bench: for now, the Go micro-benchmarks of the hot paths. The side-by-side
# comparison with qemu-img, restic and borg on a Debian fleet is tracked as its
# own issue and will replace this script's body.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench . -benchtime 2x ./chunkstore/ ./qcow2/ ./ingest/
