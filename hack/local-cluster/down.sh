#!/usr/bin/env bash
# Stops the cluster up.sh started and removes what it left on the host, so
# that up -> down -> up works. Signals only the processes up.sh recorded (and
# the container processes those started); cached binaries and images stay.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
[ -d "$WORK" ] || exit 0
shim=$DEBS/root/usr/bin/containerd-shim-runc-v2

for name in kube-controller-manager kube-scheduler kubelet; do stop "$name" & done
wait

# Pod sandboxes and containers: the network namespaces they use, then every
# task killed while containerd still answers.
netns=""
if pid containerd > /dev/null; then
  for c in $(ctr_ containers ls -q 2> /dev/null); do
    netns+=" $(ctr_ containers info "$c" 2> /dev/null | grep -o '"/var/run/netns/[^"]*"' | tr -d '"')"
  done
  for t in $(ctr_ tasks ls -q 2> /dev/null); do ctr_ tasks kill -a -s SIGKILL "$t" > /dev/null 2>&1; done
fi
# Whatever still runs in the kubelet's cgroups is a container of ours too
# (e.g. when containerd died first).
for procs in $(find /sys/fs/cgroup/*/kubepods -name cgroup.procs 2> /dev/null); do
  for p in $(cat "$procs" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
done
stop containerd
# Shims outlive containerd (they are reparented); ours run the cached binary.
for exe in $(find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$shim" 2> /dev/null); do
  p=${exe#/proc/}
  kill -KILL "${p%/exe}" 2> /dev/null
done

# holdenv stops etcd and kube-apiserver itself; its children are killed if
# it could not.
if p=$(pid holdenv); then
  children=$(ps -o pid= --ppid "$p" | tr -d ' ')
  stop holdenv 30
  for c in $children; do kill -KILL "$c" 2> /dev/null; done
fi

# Mounts under $WORK (overlay snapshots, volumes, shm), deepest first.
awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount "$m" 2> /dev/null || umount -l "$m"
done
for ns in $netns; do
  umount "$ns" 2> /dev/null
  rm -f "$ns"
done
ip link del "$BRIDGE" 2> /dev/null
find /var/log/containers -lname "$WORK/*" -delete 2> /dev/null
rm -rf /var/lib/cni/results/socketcluster-local-* 2> /dev/null
if [ -f "$WORK/host-paths" ]; then
  while read -r p; do
    case $p in
      /sys/fs/cgroup/*) find "$p" -depth -type d -exec rmdir {} + 2> /dev/null ;;
      /run/netns) rmdir "$p" 2> /dev/null ;; # only if no other namespace is left
      *) rm -rf "$p" ;;
    esac
  done < "$WORK/host-paths"
fi
rm -rf "$WORK"
log "cluster down"
