#!/usr/bin/env bash
# A second S3 engine for `make s3-interop`: SeaweedFS (Apache-2.0)
# `weed mini` (master, volume, filer and S3 in one process) on loopback.
#
#   scripts/seaweedfs.sh start DIR   start it, data under DIR/data; print
#                                    export lines for eval (AWS_*)
#   scripts/seaweedfs.sh stop DIR    stop the server started for DIR (by PID)
#
# The binary: $WEED, else weed on PATH, else DIR/../weed built from the
# module (go install refuses SeaweedFS's replace directive, so this builds
# inside `go mod download`'s copy: about 25 minutes cold on 2 cores).
set -euo pipefail
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6

weed_bin() {
	if [ -n "${WEED:-}" ]; then echo "$WEED"; return; fi
	if command -v weed >/dev/null 2>&1; then command -v weed; return; fi
	local out="$1/weed"
	if [ ! -x "$out" ]; then
		echo "seaweedfs: building weed $SEAWEEDFS_VERSION (a long while when cold)..." >&2
		local mod
		mod="$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
		(cd "$mod" && GOFLAGS=-buildvcs=false go build -o "$out" ./weed) >&2
	fi
	echo "$out"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
	local dir="$1" bin port
	mkdir -p "$dir/data"
	dir="$(cd "$dir" && pwd)"
	bin="$(weed_bin "$dir")"
	local key="engram-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
	local secret="$(od -An -N16 -tx4 /dev/urandom | tr -d ' ')"
	cat >"$dir/s3.json" <<JSON
{"identities":[{"name":"engram","credentials":[{"accessKey":"$key","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
	port="$(free_port)"
	# Every bucket is a collection with volumes of its own: small volumes
	# and no fixed count, or the test buckets run out of writable volumes.
	setsid "$bin" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
		-master.port="$(free_port)" -volume.port="$(free_port)" -filer.port="$(free_port)" \
		-admin.port="$(free_port)" -admin.port.legacy=0 -webdav.port="$(free_port)" \
		-s3.port="$port" -s3.config="$dir/s3.json" \
		-master.volumeSizeLimitMB=16 -volume.max=0 \
		>"$dir/weed.log" 2>&1 </dev/null &
	echo $! >"$dir/weed.pid"
	for _ in $(seq 1 120); do
		# 403 (unsigned request refused) means S3 is up.
		if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)" = 403 ]; then
			{
				echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$port"
				echo "export AWS_ACCESS_KEY_ID=$key"
				echo "export AWS_SECRET_ACCESS_KEY=$secret"
				echo "export AWS_REGION=us-east-1"
			} | tee "$dir/env"
			return 0
		fi
		kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null || { echo "seaweedfs: weed exited, see $dir/weed.log" >&2; exit 1; }
		sleep 0.5
	done
	echo "seaweedfs: S3 not answering after 60 s, see $dir/weed.log" >&2
	stop "$dir"
	exit 1
}

stop() {
	local dir="$1"
	[ -f "$dir/weed.pid" ] || return 0
	local pid
	pid="$(cat "$dir/weed.pid")"
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$dir/weed.pid"
}

case "${1:-}" in
start) start "${2:?start DIR}" ;;
stop) stop "${2:?stop DIR}" ;;
*) echo "usage: $0 start DIR | stop DIR" >&2; exit 2 ;;
esac
