#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries the tests need (kube-apiserver,
# etcd, and on request kubectl, kubelet, scheduler, controller-manager) from
# the Go module proxy, because envtest's usual download is not reachable from
# CI. The result is cached outside the work tree and reused between runs.
#
#   OUT=dir COMPONENTS="kube-apiserver kubectl" hack/build-k8s-binaries.sh
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.7.3}
COMPONENTS=${COMPONENTS:-kube-apiserver}
CACHE=${SOCKETCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
OUT=$(realpath -m "${OUT:-$CACHE/k8s-$K8S_VERSION}")
WORK=$CACHE/build-k8s
STAGING_V="v0.${K8S_VERSION#1.}"
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
missing=""
[ -x "$OUT/etcd" ] || missing="etcd"
for c in $COMPONENTS; do [ -x "$OUT/$c" ] || missing="$missing $c"; done
if [ -z "$missing" ]; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT" "$WORK/k8s" "$WORK/etcd"
export GOFLAGS=-mod=mod

# k8s.io/kubernetes replaces its staging modules with ./staging paths, so a
# wrapper module pins each of them to its published v0.x tag.
GOMOD=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
cd "$WORK/k8s"
{
  printf 'module envtestbins/k8s\n\ngo %s\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' \
    "$(awk '/^go /{print $2; exit}' "$GOMOD")" "$K8S_VERSION"
  grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$GOMOD" | awk -v v="$STAGING_V" '{printf "\t%s => %s %s\n", $1, $1, v}'
  printf ')\n'
} > go.mod
{ printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for c in $COMPONENTS; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
  printf ')\n'; } > tools.go
go mod tidy >&2
PKG=k8s.io/component-base/version CPKG=k8s.io/client-go/pkg/version V="v$K8S_VERSION"
LDF="-s -w -X $PKG.gitVersion=$V -X $PKG.gitMajor=1 -X $PKG.gitMinor=$MINOR -X $PKG.gitTreeState=clean"
LDF="$LDF -X $CPKG.gitVersion=$V -X $CPKG.gitMajor=1 -X $CPKG.gitMinor=$MINOR"
for c in $COMPONENTS; do
  [ -x "$OUT/$c" ] || go build -trimpath -ldflags "$LDF" -o "$OUT/$c" "k8s.io/kubernetes/cmd/$c" >&2
done

if [ ! -x "$OUT/etcd" ]; then
  cd "$WORK/etcd"
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  [ -f go.mod ] || go mod init envtestbins/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" . >&2
fi
echo "$OUT"
