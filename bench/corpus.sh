#!/usr/bin/env bash
# bench/corpus.sh MODE CLONES DIR — builds the benchmark corpus in DIR (once;
# bench/run caches it by a version key). MODE is "full" (a Debian minbase root
# file system from debootstrap in an ext4 image) or "quick" (synthetic data).
#
# DIR gets:
#   template.qcow2        the template, plain qcow2
#   template.zstd.qcow2   the same, zstd-compressed clusters (as cloud images ship)
#   clone-K.qcow2         K=1..CLONES+1: overlays on template.qcow2 holding only
#                         the clusters that differ (the last one is the
#                         "one more clone" of the incremental case)
#   flat-K.qcow2          each clone flattened to a standalone qcow2
#   clone-1.zstd.qcow2    clone 1 flattened with zstd-compressed clusters
#   manifest.txt          what was built, with sizes
set -euo pipefail
mode=${1:?mode: full or quick}
n=${2:?number of clones}
dir=${3:?output dir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
cd "$dir"
work=$dir/work
rm -rf "$work"; mkdir -p "$work"

die() { echo "bench/corpus: $*" >&2; exit 1; }
log() { echo "bench/corpus: $*" >&2; }

# mixdata MiB SEED: deterministic-looking mixed content, ~40% random bytes
# (binaries, compressed files) and ~60% log-like text, in 1 MiB pieces.
mixdata() {
  local mib=$1 seed=$2 i
  for ((i = 0; i < mib; i++)); do
    if (( (i + seed) % 5 < 2 )); then
      head -c 1048576 /dev/urandom
    else
      awk -v s="$seed" -v p="$i" 'BEGIN { srand(s * 7919 + p); n = 0;
        split("sshd cron systemd kernel nginx postgres dhclient apt", d, " ");
        while (n < 1048576) {
          l = sprintf("2025-05-%02d %02d:%02d:%02d host%d %s[%d]: request %d from 10.%d.%d.%d took %.3f ms status %d\n",
            1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60), s, d[1 + int(rand() * 8)],
            int(rand() * 65535), int(rand() * 1e6), int(rand() * 255), int(rand() * 255), int(rand() * 255), rand() * 100, 200 + int(rand() * 4) * 100);
          if (n + length(l) > 1048576) l = substr(l, 1, 1048576 - n);
          printf "%s", l; n += length(l) } }'
    fi
  done
}

# fsck IMG: e2fsck in read-only mode; its report only when it finds a problem.
fsck() {
  local out
  out=$(e2fsck -fn "$1" 2>&1) || { echo "$out" >&2; die "$1: e2fsck found problems"; }
}

mirror_from_apt() {
  local m=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    m=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list.d/*.sources)
  fi
  if [[ -z $m && -f /etc/apt/sources.list ]]; then
    m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [[ -n $m ]] || die "no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
  echo "$m"
}

build_template_full() {
  local suite mirror
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  mirror=$(mirror_from_apt)
  log "debootstrap --variant=minbase $suite from $mirror (a few minutes, cached afterwards)"
  # A server-like package set on top of minbase, so the root file system
  # holds a few hundred MB as a small VM's does.
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,openssh-server,iproute2,ifupdown,isc-dhcp-client,curl,ca-certificates,python3,perl,vim-tiny,less,procps,cron,rsyslog,logrotate,sudo,gnupg,locales,man-db,xz-utils,zstd,git \
    "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb
  log "rootfs: $(du -sh "$work/rootfs" | cut -f1); mke2fs -t ext4 -d into a 3 GiB image"
  mke2fs -q -F -t ext4 -L root -d "$work/rootfs" template.raw 3G || die "mke2fs failed"
  rm -rf "$work/rootfs"
  fsck template.raw
}

build_template_quick() {
  log "synthetic template: 256 MiB virtual, 32 MiB data"
  truncate -s 256M template.raw
  local i
  for ((i = 0; i < 16; i++)); do
    mixdata 2 "$i" | dd of=template.raw bs=1M seek=$((i * 12)) conv=notrunc status=none
  done
}

# modify_full K: file-level changes through debugfs -w, as a clone's life
# would make them. The same update is written first in every clone (same
# blocks everywhere), then data of a clone-dependent size, then a second
# common file (same content, shifted offsets), then rewrites of small files.
modify_full() {
  local k=$1 img=clone-$1.raw cmds=$work/cmds-$1
  mixdata $((4 + 2 * k)) $((100 + k)) >"$work/unique-$k.bin"
  mixdata 2 $((200 + k)) >"$work/syslog-$k"
  echo "clone-$k" >"$work/hostname-$k"
  printf '%032x\n' "$k" >"$work/machine-id-$k"
  { cat "$work/status.orig"; printf '\nPackage: app-%d\nStatus: install ok installed\nVersion: 1.%d\n' "$k" "$k"; } >"$work/status-$k"
  cat >"$cmds" <<CMDS
mkdir /opt/update
cd /opt/update
write $work/shared-same.bin update.bin
mkdir /srv/data
cd /srv/data
write $work/unique-$k.bin data.bin
write $work/shared-shift.bin app.bin
cd /etc
rm hostname
write $work/hostname-$k hostname
rm machine-id
write $work/machine-id-$k machine-id
cd /var/lib/dpkg
rm status
write $work/status-$k status
cd /var/log
write $work/syslog-$k syslog.1
CMDS
  debugfs -w -f "$cmds" "$img" >"$work/debugfs-$k.log" 2>&1 || die "$img: debugfs failed (log: $work/debugfs-$k.log)"
  # debugfs keeps going after a failed command; its errors name the command.
  if grep -Ei 'error|not found|could not|no free' "$work/debugfs-$k.log" | grep -v 'rm: File not found by ext2_lookup while trying to resolve filename' | grep -q .; then
    cat "$work/debugfs-$k.log" >&2; die "$img: a debugfs command failed"
  fi
  fsck "$img"
}

# modify_quick K: raw writes: a common block at the same offset in every
# clone, clone-dependent data, a common block at a clone-dependent 4 KiB-
# aligned (not cluster-aligned) offset.
modify_quick() {
  local k=$1 img=clone-$1.raw
  dd if="$work/shared-same.bin" of="$img" bs=1M seek=60 conv=notrunc status=none
  mixdata $((1 + k)) $((100 + k)) | dd of="$img" bs=1M seek=120 conv=notrunc status=none
  dd if="$work/shared-shift.bin" of="$img" bs=4096 seek=$(((180 << 8) + 17 * k)) conv=notrunc status=none
}

case $mode in
full) build_template_full; shared_same=24 shared_shift=16 ;;
quick) build_template_quick; shared_same=3 shared_shift=2 ;;
*) die "mode $mode: want full or quick" ;;
esac
mixdata $shared_same 1 >"$work/shared-same.bin"
mixdata $shared_shift 2 >"$work/shared-shift.bin"
if [[ $mode == full ]]; then
  debugfs -R "cat /var/lib/dpkg/status" template.raw >"$work/status.orig" 2>/dev/null || die "template.raw: cannot read /var/lib/dpkg/status"
  [[ -s $work/status.orig ]] || die "template.raw: empty /var/lib/dpkg/status"
fi

qemu-img convert -f raw -O qcow2 template.raw template.qcow2
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd template.raw template.zstd.qcow2
qemu-img compare -q -f raw -F qcow2 template.raw template.zstd.qcow2 || die "template.zstd.qcow2 differs from template.raw"

for ((k = 1; k <= n + 1; k++)); do
  log "clone $k/$((n + 1))"
  rm -f "clone-$k.raw" "clone-$k.qcow2" "flat-$k.qcow2"
  cp --sparse=always template.raw "clone-$k.raw"
  "modify_$mode" "$k"
  # An overlay on the modified raw, then a safe rebase onto the template:
  # qemu-img compares both and keeps only the clusters that differ.
  qemu-img create -q -f qcow2 -b "clone-$k.raw" -F raw "clone-$k.qcow2"
  qemu-img rebase -b template.qcow2 -F qcow2 "clone-$k.qcow2"
  qemu-img compare -q -f qcow2 -F raw "clone-$k.qcow2" "clone-$k.raw" || die "clone-$k.qcow2 differs from clone-$k.raw"
  qemu-img check -q "clone-$k.qcow2" || die "clone-$k.qcow2: qemu-img check failed"
  qemu-img convert -O qcow2 "clone-$k.qcow2" "flat-$k.qcow2"
  qemu-img compare -q -f qcow2 -F raw "flat-$k.qcow2" "clone-$k.raw" || die "flat-$k.qcow2 differs from clone-$k.raw"
  if ((k == 1)); then
    qemu-img convert -O qcow2 -c -o compression_type=zstd "clone-$k.qcow2" "clone-$k.zstd.qcow2"
    qemu-img compare -q -f qcow2 -F raw "clone-$k.zstd.qcow2" "clone-$k.raw" || die "clone-$k.zstd.qcow2 differs"
  fi
  rm -f "clone-$k.raw"
done
rm -f template.raw
rm -rf "$work"
{
  echo "mode=$mode clones=$n built=$(date -u +%FT%TZ)"
  for f in *.qcow2; do
    printf '%s\tfile=%s\tvirtual=%s\n' "$f" "$(stat -c %s "$f")" \
      "$(qemu-img info --output=json "$f" | awk -F'[:,]' '/"virtual-size"/ { gsub(/ /, "", $2); print $2; exit }')"
  done
} >manifest.txt
cat manifest.txt >&2
