package resources

import (
	"math"
	"strconv"
)

// AnnotationPodDeletionCost ranks the pods of a ReplicaSet for a scale-down:
// the ReplicaSet controller deletes those of lower cost first.
const AnnotationPodDeletionCost = "controller.kubernetes.io/pod-deletion-cost"

// DeletionCost is the pod-deletion-cost of a pod that holds conns
// connections: a scale-down removes the least loaded pods, so the fewest
// devices have to move.
func DeletionCost(conns int64) string {
	return strconv.FormatInt(min(max(conns, 0), math.MaxInt32), 10)
}

// DeletionCostStale tells whether a pod's annotation (current, "" when
// absent) is far enough from want to be rewritten: counts move all the
// time, and every write is a pod update for each watcher, so costs within
// 10% (or 10 connections) of the truth are kept.
func DeletionCostStale(current, want string) bool {
	c, err := strconv.ParseInt(current, 10, 64)
	if err != nil {
		return true
	}
	w, _ := strconv.ParseInt(want, 10, 64)
	diff := c - w
	if diff < 0 {
		diff = -diff
	}
	return diff > max(10, w/10)
}
