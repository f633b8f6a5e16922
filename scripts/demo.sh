#!/usr/bin/env bash
# make demo: builds a sample template and a clone with qemu-img/qemu-io,
# ingests both into a fresh store, restores the clone and lets qemu-img judge.
set -euo pipefail
cd "$(dirname "$0")/.."
engram=$PWD/bin/engram
d=demo
rm -rf "$d"; mkdir -p "$d"
export ENGRAM_STORE=$PWD/$d/store

# Bold command lines on a terminal only: a log file gets plain text.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }

echo "== building a 1 GiB template and a clone overlay in $d/"
# The template: 1 GiB virtual with ~200 MiB of data, half random (like
# binaries and compressed files), half text (like configs and logs).
truncate -s 1G "$d/template.raw"
for i in $(seq 0 19); do
  dd if=/dev/urandom bs=1M count=5 status=none | dd of="$d/template.raw" bs=1M seek=$((i*40)) conv=notrunc status=none
  seq $((i*1000000+1000000)) $((i*1000000+1600000)) | dd of="$d/template.raw" bs=1M seek=$((i*40+10)) conv=notrunc status=none
done
qemu-img convert -f raw -O qcow2 "$d/template.raw" "$d/template.qcow2"
rm "$d/template.raw"
# The clone: an overlay on the template that changes a few MiB.
qemu-img create -q -f qcow2 -b template.qcow2 -F qcow2 "$d/clone.qcow2"
qemu-io -f qcow2 -c "write -P 0xc1 16M 2M" -c "write -z 40M 1M" -c "write -P 0xc2 900M 3M" "$d/clone.qcow2" >/dev/null

step "$engram" --version
step "$engram" inspect "$d/clone.qcow2"
step "$engram" ingest --name template "$d/template.qcow2"
step "$engram" ingest --name clone --label role=web "$d/clone.qcow2"
step "$engram" ls
step "$engram" restore clone -o "$d/clone-restored.qcow2"
step qemu-img compare "$d/clone.qcow2" "$d/clone-restored.qcow2"
step qemu-img check "$d/clone-restored.qcow2"
step "$engram" restore clone -O raw -o "$d/clone-restored.raw"
step qemu-img compare -f qcow2 -F raw "$d/clone.qcow2" "$d/clone-restored.raw"
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
  echo
  echo "== the archive in place: engram mount (FUSE) in the background"
  mkdir -p "$d/mnt"
  "$engram" mount "$d/mnt" 2>"$d/mount.log" &
  mpid=$!
  trap 'kill -INT $mpid 2>/dev/null; wait $mpid 2>/dev/null || fusermount3 -u -z "$d/mnt" 2>/dev/null' EXIT
  for _ in $(seq 100); do [ -e "$d/mnt/by-name/clone.raw" ] && break; sleep 0.1; done
  step ls -l "$d/mnt/by-name/"
  step qemu-img compare -f qcow2 -F raw "$d/clone.qcow2" "$d/mnt/by-name/clone.raw"
  step du -hL --apparent-size "$d/mnt/by-name/clone.raw"
  step du -hL "$d/mnt/by-name/clone.raw"
  kill -INT $mpid; wait $mpid; trap - EXIT
  echo "(unmounted)"
fi
if command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null; then
  echo
  echo "== the archive in place: engram serve (NBD) on a unix socket, and a VM disk on top of it"
  "$engram" serve --socket "$d/nbd.sock" clone 2>"$d/serve.log" &
  spid=$!
  trap 'kill -INT $spid 2>/dev/null; wait $spid 2>/dev/null' EXIT
  for _ in $(seq 100); do [ -S "$d/nbd.sock" ] && break; sleep 0.1; done
  step nbdinfo --size "nbd+unix:///clone?socket=$d/nbd.sock"
  step nbdinfo --map --totals "nbd+unix:///clone?socket=$d/nbd.sock"
  step qemu-img compare -f qcow2 -F raw "$d/clone.qcow2" "nbd+unix:///clone?socket=$PWD/$d/nbd.sock"
  # Boot-from-archive recipe: a qcow2 overlay whose backing is the export.
  step qemu-img create -q -f qcow2 -b "nbd+unix:///clone?socket=$PWD/$d/nbd.sock" -F raw "$d/vm.qcow2"
  step qemu-io -f qcow2 -c "write -P 0x77 1M 64k" "$d/vm.qcow2"
  step qemu-img info "$d/vm.qcow2"
  kill -INT $spid; wait $spid; trap - EXIT
  echo "(server stopped)"
fi
step "$engram" stats

echo "== the fleet view: two clones with data of their own and a clone of a clone, all flattened, in a second store"
for c in 2 3; do
  qemu-img create -q -f qcow2 -b template.qcow2 -F qcow2 "$d/clone$c.qcow2"
  dd if=/dev/urandom of="$d/own" bs=1M count=3 status=none
  qemu-io -f qcow2 -c "write -s $d/own $((620+c*40))M 3M" "$d/clone$c.qcow2" >/dev/null
done
qemu-img create -q -f qcow2 -b clone2.qcow2 -F qcow2 "$d/clone-of-clone.qcow2"
dd if=/dev/urandom of="$d/own" bs=1M count=2 status=none
qemu-io -f qcow2 -c "write -s $d/own 820M 2M" "$d/clone-of-clone.qcow2" >/dev/null
rm "$d/own"
mkdir -p "$d/flat"
for n in template clone2 clone3 clone-of-clone; do
  qemu-img convert -O qcow2 "$d/$n.qcow2" "$d/flat/$n.qcow2"
  ENGRAM_STORE=$PWD/$d/flatstore "$engram" -q ingest --name "$n" "$d/flat/$n.qcow2" >/dev/null
done
export ENGRAM_STORE=$PWD/$d/flatstore
step "$engram" sketch
step "$engram" similar clone2
step "$engram" lineage clone-of-clone
step "$engram" tree
step "$engram" restore --thin --dry-run -o "$d/thin" template clone2 clone3 clone-of-clone
step "$engram" restore --thin -o "$d/thin" template clone2 clone3 clone-of-clone
for n in template clone2 clone3 clone-of-clone; do
  step qemu-img compare "$d/$n.qcow2" "$d/thin/$n.qcow2"
done
step du -ch "$d/thin"
if S3_SERVER_INSTALL=0 scripts/s3-server.sh install 2>/dev/null; then
  echo
  echo "== one store for many hosts: the same images into an S3 bucket (versitygw on loopback)"
  eval "$(scripts/s3-server.sh start "$d/s3")"
  trap 'scripts/s3-server.sh stop "$d/s3"' EXIT
  s3=s3://engram-demo/fleet
  step "$engram" --store $s3 --cache-dir "$d/cache-host-a" init
  step "$engram" --store $s3 --cache-dir "$d/cache-host-a" ingest --name template "$d/template.qcow2"
  step "$engram" --store $s3 --cache-dir "$d/cache-host-b" ingest --name clone "$d/clone.qcow2"
  # A third host with an empty cache sees both and restores the clone.
  step "$engram" --store $s3 --cache-dir "$d/cache-host-c" ls
  step "$engram" --store $s3 --cache-dir "$d/cache-host-c" restore clone -o "$d/clone-from-s3.qcow2"
  step qemu-img compare "$d/clone.qcow2" "$d/clone-from-s3.qcow2"
  scripts/s3-server.sh stop "$d/s3"; trap - EXIT
else
  echo
  echo "(versitygw is not installed, so the S3 part is left out: make deps installs it)"
fi
export ENGRAM_STORE=$PWD/$d/store
step "$engram" verify
echo
echo "demo: ok — the clone restored identical; it cost the store only its own changes (see stats);"
echo "the flattened fleet came back as template + thin overlays (see tree and restore --thin)."
