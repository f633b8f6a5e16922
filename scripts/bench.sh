#!/usr/bin/env bash
# make bench: engram side by side with qemu-img, restic and borg on a Debian
# VM fleet (see bench/README.md). Arguments go to the runner, e.g.
#   scripts/bench.sh -mode quick      (or bench/quick, or BENCH_MODE=quick make bench)
#   scripts/bench.sh -clones 8 -runs 5
# Results: bench/out/results.md and bench/out/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tools the corpus and the comparison need, from Debian's packages.
need=()
for t in debootstrap:debootstrap mke2fs:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs \
  restic:restic borg:borgbackup qemu-img:qemu-utils zstd:zstd; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
  echo "bench: installing ${need[*]}" >&2
  sudo=""
  ((EUID == 0)) || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}"
fi
if [[ ${BENCH_MODE:-full} == full && $EUID -ne 0 ]]; then
  echo "bench: the full corpus needs root (debootstrap, mke2fs -d with owners); run as root or use -mode quick" >&2
fi

[[ -x bin/engram ]] || go build -o bin/engram ./cmd/engram
mkdir -p bench/out
go build -o bench/out/run ./bench/run
args=(-mode "${BENCH_MODE:-full}")
bench/out/run "${args[@]}" "$@"

# The rows of the in-place and fleet-view issues, on the corpus bench/run
# just used (the newest one of this mode): restore --thin of the flattened
# fleet (bench/thin), and reading one flattened clone through engram serve
# and engram mount against restore, time to first byte and random reads
# (bench/inplace); the fleet into a bucket on versitygw against the
# directory store, restore from each, four concurrent ingesters against one
# (bench/s3). Their tables are appended to results.md.
corpus=$(ls -td bench/cache/"${BENCH_MODE:-full}"-*/ 2>/dev/null | head -1)
if [[ -n $corpus && -f $corpus/template.qcow2 ]]; then
  go build -o bench/out/thin ./bench/thin
  go build -o bench/out/inplace ./bench/inplace
  go build -o bench/out/s3 ./bench/s3
  {
    echo
    echo "## restore --thin of the flattened fleet (bench/thin)"
    echo
    bench/out/thin -corpus "$corpus" -engram bin/engram
    echo
    echo "## in place: serve and mount against restore (bench/inplace, ${corpus}flat-1.qcow2)"
    echo
    bench/out/inplace -image "${corpus}flat-1.qcow2" -engram bin/engram -copy /usr/bin/perl
    echo
    echo "## block size: store against cold random chunk read (bench/codec, the overlay fleet: template + clones)"
    echo
    echo "One scratch store per setting, the overlay fleet ingested in-process; the store is du of the whole store directory;"
    echo "a cold read is one chunk whose block is not cached (pread from the page cache, decode of the whole block, BLAKE3)."
    echo
    # The overlay fleet: every clone but the last (the "one more clone").
    mapfile -t fleet < <(ls "$corpus"clone-*.qcow2 | grep -v zstd | sort -V | head -n -1)
    go run ./bench/codec -md -levels fastest-noentropy,fastest -blocks 1,2,4 -reads 200 \
      "${corpus}template.qcow2" "${fleet[@]}"
    echo
    echo "## S3 (versitygw on loopback) against the directory store (bench/s3, $corpus)"
    echo
    bench/out/s3 -corpus "$corpus" -engram bin/engram
  } | tee -a bench/out/results.md
fi
