#!/bin/sh
# Regenerates the Go code of proto/ (checked in: building and testing need
# no protoc). Needs protoc (Debian: protobuf-compiler); the Go plugins are
# installed at the versions below into the cache.
set -eu
cd "$(dirname "$0")/.."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/castellan/protoc-bin"
PROTOC_GEN_GO=v1.36.12
PROTOC_GEN_GO_GRPC=v1.5.1
mkdir -p "$CACHE"
GOBIN="$CACHE" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
GOBIN="$CACHE" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
PATH="$CACHE:$PATH" protoc -I proto \
	--go_out=. --go_opt=module=github.com/castellan-mesh/castellan \
	--go-grpc_out=. --go-grpc_opt=module=github.com/castellan-mesh/castellan \
	proto/castellan/ca/v1/jwt.proto
