#!/usr/bin/env bash
# A local S3 server (versitygw, Apache-2.0) for engram's S3 tests and for
# trying `--store s3://...` out.
#
#   scripts/s3-server.sh start DIR   start it on a free loopback port, data
#                                    under DIR/data; print export lines:
#                                      eval "$(scripts/s3-server.sh start /tmp/s3)"
#   scripts/s3-server.sh stop DIR    stop the server started for DIR (by PID)
#   scripts/s3-server.sh install     install versitygw when missing
#
# versitygw is installed with `go install` when neither PATH nor
# $(go env GOPATH)/bin has it (about 3 minutes cold; S3_SERVER_INSTALL=0
# refuses instead). DIR also holds
# versitygw.pid, versitygw.log and env (the export lines).
set -euo pipefail
VERSITYGW_VERSION=v1.8.0

find_bin() {
	if command -v versitygw >/dev/null 2>&1; then command -v versitygw; return 0; fi
	local gobin
	gobin="$(go env GOBIN 2>/dev/null || true)"
	[ -n "$gobin" ] || gobin="$(go env GOPATH 2>/dev/null)/bin"
	if [ -x "$gobin/versitygw" ]; then echo "$gobin/versitygw"; return 0; fi
	return 1
}

install_bin() {
	find_bin >/dev/null && return 0
	[ "${S3_SERVER_INSTALL:-1}" != 0 ] || { echo "s3-server: versitygw is not installed (make deps installs it)" >&2; return 1; }
	echo "s3-server: installing versitygw $VERSITYGW_VERSION (go install, a few minutes)..." >&2
	GOFLAGS=-buildvcs=false go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
	find_bin >/dev/null
}

free_port() {
	command -v python3 >/dev/null 2>&1 || { echo $((20000 + RANDOM % 30000)); return; }
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
	local dir="$1"
	mkdir -p "$dir/data"
	dir="$(cd "$dir" && pwd)"
	if [ -f "$dir/versitygw.pid" ] && kill -0 "$(cat "$dir/versitygw.pid")" 2>/dev/null && [ -f "$dir/env" ]; then
		cat "$dir/env"
		return 0
	fi
	install_bin || { echo "s3-server: versitygw not installed and go install failed" >&2; exit 1; }
	local bin port key secret pid
	bin="$(find_bin)"
	key="engram-test-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
	secret="$(od -An -N16 -tx4 /dev/urandom | tr -d ' ')"
	for _ in 1 2 3 4 5; do
		port="$(free_port)"
		ROOT_ACCESS_KEY_ID="$key" ROOT_SECRET_ACCESS_KEY="$secret" \
			setsid "$bin" --quiet --port "127.0.0.1:$port" posix "$dir/data" \
			>"$dir/versitygw.log" 2>&1 </dev/null &
		pid=$!
		echo "$pid" >"$dir/versitygw.pid"
		# Wait until it answers HTTP (any status), or dies (port taken).
		for _ in $(seq 1 100); do
			if ! kill -0 "$pid" 2>/dev/null; then break; fi
			if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
				cat >"$dir/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
ENV
				cat "$dir/env"
				return 0
			fi
			sleep 0.1
		done
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	echo "s3-server: versitygw did not start; see $dir/versitygw.log:" >&2
	tail -5 "$dir/versitygw.log" >&2 || true
	rm -f "$dir/versitygw.pid"
	exit 1
}

stop() {
	local dir="$1" pid
	[ -f "$dir/versitygw.pid" ] || { echo "s3-server: no server recorded in $dir" >&2; return 0; }
	pid="$(cat "$dir/versitygw.pid")"
	if kill "$pid" 2>/dev/null; then
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$dir/versitygw.pid" "$dir/env"
}

case "${1:-}" in
start) [ $# -eq 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
install) install_bin ;;
*) echo "usage: $0 start DIR | stop DIR | install" >&2; exit 2 ;;
esac
