#!/usr/bin/env bash
# Installs helm from the Go module proxy (release downloads are not reachable
# from CI) into a cache outside the work tree, and prints the binary's path.
# Reused when it is there in the wanted version.
#
#   HELM=$(hack/helm.sh) && $HELM version
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-3.22.0}
CACHE=${SOCKETCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
BIN=$CACHE/bin
if [ "$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" != "v$HELM_VERSION" ]; then
  mkdir -p "$BIN"
  # Like helm's own release build, stamp the version and the Kubernetes
  # version of its client-go: `helm template` and `helm lint` assume that
  # cluster version (else v1.20, which charts' kubeVersion constraints refuse).
  GOMOD=$(go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  K8S_MINOR=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2]; exit }' "$GOMOD")
  LDF="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  for pkg in chartutil lint/rules; do
    LDF="$LDF -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMinor=$K8S_MINOR"
  done
  GOBIN=$BIN go install -trimpath -ldflags "$LDF" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
fi
echo "$BIN/helm"
