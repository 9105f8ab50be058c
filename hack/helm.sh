#!/usr/bin/env bash
# Installs helm from the Go module proxy (release downloads are not reachable
# from CI) into a cache outside the work tree, and prints the binary's path.
# Reused when present.
#
#   HELM=$(hack/helm.sh) && $HELM version
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-3.22.0}
CACHE=${SOCKETCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
BIN=$CACHE/helm-$HELM_VERSION/bin
if [ ! -x "$BIN/helm" ]; then
  mkdir -p "$BIN"
  GOBIN=$BIN GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
fi
echo "$BIN/helm"
