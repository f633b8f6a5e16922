#!/usr/bin/env bash
# Installs the tools engram's tests and demo need: qemu-img and qemu-io from
# Debian's qemu-utils.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing qemu-utils (qemu-img, qemu-io)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
qemu-img --version | head -1 >&2
