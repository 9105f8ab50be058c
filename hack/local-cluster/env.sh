#!/usr/bin/env bash
# Prints the local cluster's settings as `export KEY="value"` lines, for a
# shell (eval "$(hack/local-cluster/env.sh)") and for test/e2e.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
for kv in "KUBECONFIG=$KUBECONFIG_FILE" "KUBECTL=$K8S_BIN/kubectl" "CTR=$DEBS/root/usr/bin/ctr" \
  "CONTAINERD_ADDRESS=$CTRD_SOCK" "IMAGE_REPO=$IMAGE_REPO" "IMAGE_TAGS=$IMAGE_TAGS" \
  "REDIS_IMAGE=$REDIS_IMAGE" "POD_CIDR=$POD_CIDR" "POD_GATEWAY=$POD_GATEWAY" "LOCAL_CLUSTER_DIR=$WORK"; do
  printf 'export %s="%s"\n' "${kv%%=*}" "${kv#*=}"
done
