#!/usr/bin/env bash
# Installs the tools engram's tests and demo need, from Debian's packages,
# when they are missing:
#   qemu-utils       qemu-img and qemu-io judge every image
#   fuse3            fusermount3 for `engram mount`
#   libnbd-bin       nbdinfo and nbdcopy judge `engram serve`
#   nbdkit           the copy-on-write recipe in README
#   qemu-system-x86  the boot-from-archive test
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v nbdinfo >/dev/null 2>&1 && command -v nbdcopy >/dev/null 2>&1 || need+=(libnbd-bin)
command -v nbdkit >/dev/null 2>&1 || need+=(nbdkit)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing ${need[*]}..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
qemu-img --version | head -1 >&2
