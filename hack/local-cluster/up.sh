#!/usr/bin/env bash
# Starts a single-node Kubernetes with real Pods on this machine, without a
# container engine: containerd, runc and the CNI plugins come from Debian
# packages, the Kubernetes binaries are built from the Go module proxy, and
# etcd + kube-apiserver run under envtest (holdenv). Everything the cluster
# writes lives in $WORK (see lib.sh); down.sh removes it. Needs root.
#
#   eval "$(hack/local-cluster/up.sh)"     # then: hack/local-cluster/images.sh
#
# Prints `export KUBECONFIG=...` on success (-k: just the path); a second run
# while the cluster is up only prints it again. containerd's image store is
# runtime state, so images.sh imports the images again after every up.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ "$(pid holdenv 2> /dev/null)" ] && [ -f "$KUBECONFIG_FILE" ]; then
  [ "${1:-}" = -k ] && echo "$KUBECONFIG_FILE" || echo "export KUBECONFIG=$KUBECONFIG_FILE"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (kubelet, containerd and runc need it)"
[ -d "$WORK/pids" ] && die "$WORK holds a cluster that is not fully up: run down.sh first"
start=$(date +%s)

# ---- cached inputs -----------------------------------------------------------
log "kubernetes $K8S_VERSION binaries"
COMPONENTS="$K8S_COMPONENTS" OUT=$K8S_BIN K8S_VERSION=$K8S_VERSION "$REPO/hack/build-k8s-binaries.sh" > /dev/null

if [ ! -x "$DEBS/root/usr/bin/containerd" ]; then
  log "debian packages: $DEB_PACKAGES"
  rm -rf "$DEBS" && mkdir -p "$DEBS/dl" "$DEBS/root.new"
  (cd "$DEBS/dl" && { apt-get download $DEB_PACKAGES || { apt-get update && apt-get download $DEB_PACKAGES; }; }) >&2
  for deb in "$DEBS"/dl/*.deb; do dpkg-deb -x "$deb" "$DEBS/root.new"; done
  mv "$DEBS/root.new" "$DEBS/root"
fi

log "holdenv"
mkdir -p "$CACHE/bin"
(cd "$REPO" && go build -o "$CACHE/bin/holdenv" ./hack/local-cluster/holdenv)

# ---- runtime state -----------------------------------------------------------
# On failure: show the logs' tails and leave nothing running.
failed() {
  tail -n 15 "$WORK"/logs/*.log >&2 || true
  log "up failed; tearing down"
  "$HERE/down.sh" >&2 || true
}
trap 'failed' EXIT
mkdir -p "$WORK"/{pids,logs,tmp,cni,cni-ipam,pod-logs,kubelet,containerd}
# Host paths the kubelet and CNI write outside $WORK whatever they are told;
# down.sh removes the ones that did not exist before.
for p in /var/log/containers /var/lib/cni /run/netns /var/lib/kubelet; do
  [ -e "$p" ] || echo "$p"
done > "$WORK/host-paths"
for c in /sys/fs/cgroup/*/; do [ -e "${c}kubepods" ] || echo "${c}kubepods"; done >> "$WORK/host-paths"
render() {
  sed -e "s|@WORK@|$WORK|g" -e "s|@DEBS@|$DEBS|g" -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
    -e "s|@BRIDGE@|$BRIDGE|g" -e "s|@POD_CIDR@|$POD_CIDR|g" "$HERE/$1" > "$2"
}
render containerd.toml "$WORK/containerd/config.toml"
render cni.conflist "$WORK/cni/10-socketcluster.conflist"
render kubelet.yaml "$WORK/kubelet/config.yaml"

log "containerd"
launch containerd containerd --config "$WORK/containerd/config.toml"
wait_for containerd 20 ctr_ version
"$HERE/images.sh" pause

log "etcd + kube-apiserver"
# The apiserver serves on the pod network's gateway, so that Pods (e.g. the
# operator) reach it: there is no kube-proxy, so the "kubernetes" Service IP
# does not route; Pods that talk to the API set
# KUBERNETES_SERVICE_HOST=$POD_GATEWAY and the port in the kubeconfig. The
# bridge is made here (the CNI plugin adopts it) so the address exists now.
ip link add "$BRIDGE" type bridge
ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Node "localhost" with Hostname address: the apiserver reaches the kubelet on
# loopback (the kubelet refuses 127.0.0.1 as --node-ip). The ServiceAccount
# admission plugin, which envtest turns off, is back on so Pods get tokens.
TMPDIR=$WORK/tmp launch holdenv "$CACHE/bin/holdenv" -assets "$K8S_BIN" -kubeconfig-out "$KUBECONFIG_FILE" -listen "$POD_GATEWAY" \
  -apiserver-arg kubelet-preferred-address-types=Hostname -apiserver-arg disable-admission-plugins=-
wait_for kube-apiserver 60 test -f "$KUBECONFIG_FILE"

log "kubelet, scheduler, controller-manager"
launch kubelet kubelet --config="$WORK/kubelet/config.yaml" --kubeconfig="$KUBECONFIG_FILE" \
  --root-dir="$WORK/kubelet" --cert-dir="$WORK/kubelet/pki" --hostname-override=localhost --v=1
launch kube-scheduler kube-scheduler --kubeconfig="$KUBECONFIG_FILE" \
  --authentication-kubeconfig="$KUBECONFIG_FILE" --authorization-kubeconfig="$KUBECONFIG_FILE" \
  --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false
# No serviceaccount-token controller: it needs the signing key, and Pods get
# their tokens from the TokenRequest API anyway.
launch kube-controller-manager kube-controller-manager --kubeconfig="$KUBECONFIG_FILE" \
  --authentication-kubeconfig="$KUBECONFIG_FILE" --authorization-kubeconfig="$KUBECONFIG_FILE" \
  --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
  --use-service-account-credentials=false --controllers='*,-serviceaccount-token'
wait_for "node localhost" 120 kubectl_ wait --for=condition=Ready node/localhost --timeout=1s
wait_for "default service account" 60 kubectl_ get serviceaccount default

trap - EXIT
log "cluster up in $(($(date +%s) - start))s"
[ "${1:-}" = -k ] && echo "$KUBECONFIG_FILE" || echo "export KUBECONFIG=$KUBECONFIG_FILE"
