package conditions

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/rollout"
)

// Progressing is True while pods are being replaced or added: the Deployment
// has not seen its latest spec, or not every pod runs it and is available,
// or old pods are still around. With ReconnectOnce (step not nil), d is
// the desired revision's Deployment and the rollout goes on until the old
// revision is gone.
func Progressing(sc *v1alpha1.SocketCluster, d *appsv1.Deployment, step *rollout.Step) metav1.Condition {
	if d != nil {
		// A new revision that cannot come up stalls a ReconnectOnce
		// rollout too (the old revision keeps serving).
		if c := rolloutStalled(d); c != nil {
			return condition(sc, v1alpha1.ConditionProgressing, false, v1alpha1.ReasonProgressDeadlineExceeded, c.Message)
		}
	}
	if step != nil && step.Phase != v1alpha1.ReasonNoOldRevision {
		return condition(sc, v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRolloutInProgress, step.Message)
	}
	if d == nil {
		return condition(sc, v1alpha1.ConditionProgressing, false, v1alpha1.ReasonDeploymentNotFound, "the Deployment does not exist yet")
	}
	want, s := desired(sc), d.Status
	msg := fmt.Sprintf("%d of %d pods updated and %d available, %d pods in total", s.UpdatedReplicas, want, s.AvailableReplicas, s.Replicas)
	if s.ObservedGeneration < d.Generation {
		return condition(sc, v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRolloutInProgress, "the Deployment controller has not seen the latest spec yet")
	}
	if s.UpdatedReplicas < want || s.AvailableReplicas < want || s.Replicas > s.UpdatedReplicas {
		return condition(sc, v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRolloutInProgress, msg)
	}
	return condition(sc, v1alpha1.ConditionProgressing, false, v1alpha1.ReasonRolloutComplete, msg)
}
