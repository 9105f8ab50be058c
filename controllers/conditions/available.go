package conditions

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Available is True when at least replicas - rollout.maxUnavailable pods
// (and at least one) are ready: the capacity a rollout promises to keep.
// A cluster scaled to zero serves nobody by request, which is not an outage.
func Available(sc *v1alpha1.SocketCluster, d *appsv1.Deployment) metav1.Condition {
	want := desired(sc)
	if want == 0 {
		return condition(sc, v1alpha1.ConditionAvailable, true, v1alpha1.ReasonScaledToZero, "spec.replicas is 0")
	}
	if d == nil {
		return condition(sc, v1alpha1.ConditionAvailable, false, v1alpha1.ReasonDeploymentNotFound, "the Deployment does not exist yet")
	}
	unavailable, err := intstr.GetScaledValueFromIntOrPercent(sc.Spec.Rollout.MaxUnavailable, int(want), false)
	if err != nil {
		unavailable = 0
	}
	need := max(want-int32(unavailable), 1)
	ready := d.Status.ReadyReplicas
	msg := fmt.Sprintf("%d of %d pods ready, %d needed", ready, want, need)
	if ready >= need {
		return condition(sc, v1alpha1.ConditionAvailable, true, v1alpha1.ReasonMinimumReplicasReady, msg)
	}
	return condition(sc, v1alpha1.ConditionAvailable, false, v1alpha1.ReasonMinimumReplicasUnavailable, msg)
}
