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
if [ ${#need[@]} -gt 0 ]; then
echo "installing ${need[*]}..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
qemu-img --version | head -1 >&2
fi

# --- S3 server for the S3 store's tests (issue 12) ---------------------
# versitygw, a real S3 server on loopback that the chunkstore/blob/s3
# suite and the S3 end-to-end tests start through scripts/s3-server.sh.
# Installed with go install when missing (about 3 minutes cold).
"$(dirname "$0")/s3-server.sh" install
