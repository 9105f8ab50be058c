#!/usr/bin/env bash
# Builds grpcurl, an independent gRPC client, from the Go module proxy into a
# cache outside the work tree, and prints the binary's path. Reused when it
# is there in the wanted version.
#
#   GRPCURL=$(hack/grpcurl.sh) && $GRPCURL -plaintext 127.0.0.1:7001 list
set -euo pipefail
GRPCURL_VERSION=${GRPCURL_VERSION:-1.9.4}
CACHE=${SOCKETCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
BIN=$CACHE/grpcurl-v$GRPCURL_VERSION
if [ ! -x "$BIN/grpcurl" ]; then
  mkdir -p "$BIN"
  GOBIN=$BIN GOFLAGS=-mod=mod go install -trimpath "github.com/fullstorydev/grpcurl/cmd/grpcurl@v$GRPCURL_VERSION" >&2
fi
echo "$BIN/grpcurl"
