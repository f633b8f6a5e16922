# engram — see README.md. Every target installs what it needs.
GO       ?= go
BIN      := bin/engram
# What `engram version` prints; without it the binary says "(devel)".
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 30s
export GOFLAGS := -buildvcs=false

.PHONY: all build deps demo test unit fuzz fuzz-short bench lint clean s3-interop s3-interop-run

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/engram

# qemu-img and qemu-io judge every round trip, nbdinfo/nbdcopy the NBD
# server, fusermount3 the mount, qemu-system-x86_64 the boot test; the
# script installs whichever Debian package is missing.
deps:
	@scripts/install-deps.sh

demo: deps build
	scripts/demo.sh

# The whole suite (the S3 suites against versitygw, which deps installs;
# CI=true makes them fail rather than skip without it): vet, race-enabled tests (unit + CLI end to end against
# the built binary) and a few seconds of every fuzz target.
test: deps
	$(GO) vet ./...
	$(GO) test -race -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz-short

unit:
	$(GO) test -short ./...

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

# A fixed number of executions, not a time: short time budgets trip Go's
# fuzz coordinator ("context deadline exceeded") on a loaded machine.
fuzz-short:
	scripts/fuzz.sh 20000x

# The blob, S3 store and CLI S3 suites against a second S3 engine: the
# server your AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
# AWS_REGION point at (MinIO, AWS, ...), or when AWS_ENDPOINT_URL is unset
# SeaweedFS `weed mini` on loopback (scripts/seaweedfs.sh: $$WEED, weed on
# PATH, or built from the module — about 25 minutes cold). The tests make
# buckets named engram-test-*.
s3-interop:
	@if [ -n "$$AWS_ENDPOINT_URL" ]; then $(MAKE) --no-print-directory s3-interop-run; else \
	  d=$$(mktemp -d); trap "scripts/seaweedfs.sh stop $$d; rm -rf $$d" EXIT; \
	  env=$$(scripts/seaweedfs.sh start $$d) && eval "$$env" && $(MAKE) --no-print-directory s3-interop-run; fi

s3-interop-run:
	ENGRAM_TEST_S3_EXTERNAL=1 $(GO) test -count=1 -run 'S3|Conformance|BadInput|Prefix' ./chunkstore/blob/s3/ ./chunkstore/
	ENGRAM_TEST_S3_EXTERNAL=1 $(GO) test -count=1 -run 'S3|RoundTripVariants|RestoreCompressedAndStdout|ClonesDedup' ./cmd/engram/

bench: deps build
	scripts/bench.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin demo bench/out

# Fault and hostile-input suites, long version (internal/torture): SIGKILL
# during every command, a full disk, bit rot, a hostile qcow2 corpus,
# concurrent writers; prints what was tried and what survived.
.PHONY: torture
torture: deps
	@ENGRAM_TORTURE=full ENGRAM_TORTURE_SUMMARY=$(CURDIR)/bin/torture-summary.txt \
		$(GO) test -count=1 -timeout 60m ./internal/torture/; s=$$?; \
		cat bin/torture-summary.txt 2>/dev/null; exit $$s
