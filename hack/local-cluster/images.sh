#!/usr/bin/env bash
# Builds the cluster's images as OCI archives (hack/mkimage) in $CACHE/images
# and imports them into the running cluster's containerd. Pods use them with
# imagePullPolicy: Never (or IfNotPresent).
#
#   hack/local-cluster/images.sh [pause] [socketcluster] [redis]   (default: all)
#
# socketcluster: $IMAGE_REPO with each tag of $IMAGE_TAGS, one build, holding
#   /socketserver (entrypoint) and /manager, static, user 65532.
# redis: Debian's redis-server with the shared libraries it loads.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
OUT=$CACHE/images
mkdir -p "$OUT/bin"
mkimage() { (cd "$REPO" && go run ./hack/mkimage "$@"); }
gobuild() { (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/$1" "$2"); }

pause() {
  gobuild pause ./hack/local-cluster/pause
  mkimage -o "$OUT/pause.tar" -tag "$PAUSE_IMAGE" -entrypoint /pause -user 65532 "$OUT/bin/pause=/pause"
}

socketcluster() {
  local tags=()
  gobuild socketserver ./cmd/socketserver
  gobuild manager ./cmd/manager
  for t in $IMAGE_TAGS; do tags+=(-tag "$IMAGE_REPO:$t"); done
  mkimage -o "$OUT/socketcluster.tar" "${tags[@]}" -entrypoint /socketserver -user 65532 \
    "$OUT/bin/socketserver=/socketserver" "$OUT/bin/manager=/manager"
}

redis() {
  local bin files=()
  bin=$(command -v redis-server) || die "redis-server not found (apt-get install redis-server)"
  # redis-server is a symlink to redis-check-rdb, which picks its mode from
  # argv[0]: the file goes in under the name redis-server.
  files+=("$bin=/usr/bin/redis-server")
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do files+=("$lib=$lib"); done
  mkimage -o "$OUT/redis.tar" -tag "$REDIS_IMAGE" -entrypoint /usr/bin/redis-server -user 65532 "${files[@]}"
}

images=${*:-pause socketcluster redis}
pid containerd > /dev/null || die "the cluster is not up (hack/local-cluster/up.sh)"
for img in $images; do
  case $img in pause | socketcluster | redis) ;; *) die "unknown image $img" ;; esac
  log "image $img"
  "$img"
  ctr_ images import "$OUT/$img.tar" > /dev/null
done
