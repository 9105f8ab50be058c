#!/usr/bin/env bash
# Generates the Go code of proto/ into OUT (default: the repository root,
# so the files land in socketserver/scpv1). protoc comes from Debian's
# protobuf-compiler; the Go plugins are built at pinned versions from the
# Go module proxy into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
BIN=$CACHE/protoc-plugins/go-$PROTOC_GEN_GO_VERSION-grpc-$PROTOC_GEN_GO_GRPC_VERSION
if ! command -v protoc >/dev/null; then
  echo "protoc not found: apt-get install protobuf-compiler" >&2
  exit 1
fi
if [ ! -x "$BIN/protoc-gen-go" ] || [ ! -x "$BIN/protoc-gen-go-grpc" ]; then
  GOBIN=$BIN go install google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION
  GOBIN=$BIN go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION
fi
module=github.com/socketcluster/socketcluster
protoc -I proto \
  --plugin=protoc-gen-go="$BIN/protoc-gen-go" --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" \
  --go_out="$OUT" --go_opt=module=$module \
  --go-grpc_out="$OUT" --go-grpc_opt=module=$module \
  $(find proto -name '*.proto' | sed 's|^proto/||' | sort)
