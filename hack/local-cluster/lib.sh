# Shared settings of up.sh, down.sh and images.sh (sourced, not run).
#
# Two folders: CACHE keeps what is expensive to make (Kubernetes binaries,
# extracted Debian packages, image archives) and survives `down`; WORK holds
# everything the running cluster writes and is removed by `down`.
CACHE=${SOCKETCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/socketcluster}
WORK=$(realpath -m "${LOCAL_CLUSTER_DIR:-$CACHE/local-cluster}")
K8S_VERSION=${K8S_VERSION:-1.37.2}
K8S_COMPONENTS="kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager"
K8S_BIN=$CACHE/k8s-$K8S_VERSION
DEBS=$CACHE/debs
# Debian packages that give a container runtime without a container engine.
DEB_PACKAGES="containerd runc containernetworking-plugins"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KUBECONFIG_FILE=$WORK/admin.kubeconfig
CTRD_SOCK=$WORK/containerd/containerd.sock
# Pod network: one bridge, one /24 (also written into cni.conflist).
BRIDGE=scbr0
POD_CIDR=10.244.0.0/24
export PATH=$DEBS/root/usr/bin:$DEBS/root/usr/sbin:$K8S_BIN:$PATH

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }
kubectl_() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# alive PIDFILE: the process recorded in PIDFILE still runs.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
