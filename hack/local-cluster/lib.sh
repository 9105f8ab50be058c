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
# Pod network: one bridge, one /24.
BRIDGE=scbr0
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
# Images made by images.sh. CRI names "socketcluster/socketcluster:e2e-a" in a
# Pod docker.io/socketcluster/socketcluster:e2e-a, so that is what is imported.
IMAGE_REPO=${IMAGE_REPO:-docker.io/socketcluster/socketcluster}
IMAGE_TAGS=${IMAGE_TAGS:-e2e-a e2e-b}
PAUSE_IMAGE=socketcluster.local/pause:1
REDIS_IMAGE=socketcluster.local/redis:e2e
export PATH=$DEBS/root/usr/bin:$DEBS/root/usr/sbin:$K8S_BIN:$PATH

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }
kubectl_() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# Every process up.sh starts is recorded in $WORK/pids/NAME as "PID STARTTIME";
# the start time (clock ticks since boot) tells our process from a later one
# that got the same PID, so down.sh never signals a stranger.
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# pid NAME: prints the PID of NAME while that very process runs.
pid() {
  local f=$WORK/pids/$1 p t
  [ -f "$f" ] || return 1
  read -r p t < "$f"
  [ -n "$p" ] && [ "$(starttime "$p")" = "$t" ] && echo "$p"
}

# launch NAME CMD...: runs CMD in its own session (so a signal to the caller's
# process group does not reach it), output in $WORK/logs/NAME.log.
launch() {
  local name=$1 f=$WORK/pids/$1; shift
  mkdir -p "$WORK/pids" "$WORK/logs"
  rm -f "$f.new"
  setsid -f bash -c 'echo $$ > "$0"; exec "$@"' "$f.new" "$@" < /dev/null > "$WORK/logs/$name.log" 2>&1
  for _ in $(seq 50); do [ -s "$f.new" ] && break; sleep 0.1; done
  local p; p=$(cat "$f.new")
  echo "$p $(starttime "$p")" > "$f" && rm -f "$f.new"
}

# stop NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 20).
stop() {
  local p; p=$(pid "$1") || { rm -f "$WORK/pids/$1"; return 0; }
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq $((${2:-20} * 10))); do [ -d "/proc/$p" ] || break; sleep 0.1; done
  [ -d "/proc/$p" ] && { log "$1 ($p) ignored SIGTERM, killing"; kill -KILL "$p" 2>/dev/null || true; }
  rm -f "$WORK/pids/$1"
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds, giving up
# early when a process launched before has exited.
wait_for() {
  local what=$1 secs=$2 f; shift 2
  for _ in $(seq $((secs * 5))); do
    "$@" > /dev/null 2>&1 && return 0
    for f in "$WORK"/pids/*; do
      [[ $f == *.new ]] || pid "${f##*/}" > /dev/null || die "${f##*/} exited (log: $WORK/logs/${f##*/}.log)"
    done
    sleep 0.2
  done
  die "$what not ready after ${secs}s (logs in $WORK/logs)"
}
