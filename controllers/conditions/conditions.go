// Package conditions computes the status conditions of a SocketCluster, one
// pure function per condition, from what the controller observed.
package conditions

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// desired is the number of pods the SocketCluster asks for.
func desired(sc *v1alpha1.SocketCluster) int32 {
	if sc.Spec.Replicas == nil {
		return 0
	}
	return *sc.Spec.Replicas
}

func condition(sc *v1alpha1.SocketCluster, typ string, ok bool, reason, message string) metav1.Condition {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: sc.Generation}
}

// rolloutStalled returns the Deployment's condition saying that the rollout
// made no progress within its deadline, or nil.
func rolloutStalled(d *appsv1.Deployment) *appsv1.DeploymentCondition {
	c := deploymentCondition(d, appsv1.DeploymentProgressing)
	if c != nil && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
		return c
	}
	return nil
}

func deploymentCondition(d *appsv1.Deployment, typ appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range d.Status.Conditions {
		if d.Status.Conditions[i].Type == typ {
			return &d.Status.Conditions[i]
		}
	}
	return nil
}
