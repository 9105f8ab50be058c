package conditions

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Problems are what the controller ran into outside the Deployment.
type Problems struct {
	// MissingSecrets lists "secret/key" references that do not resolve.
	MissingSecrets []string
	// NotOwned lists objects ("Kind name") that have the names of owned
	// objects but belong to someone else, so they are left alone.
	NotOwned []string
	// Redis is the error reading connection counts, if any.
	Redis error
	// ApplyFailed is the API server's refusal of owned objects, if any.
	ApplyFailed error
	// Error stopped the reconcile before it saw everything, if any.
	Error error
}

// maxErrorMessage bounds an error quoted in a condition message.
const maxErrorMessage = 2048

// Degraded is True when something needs a person, most urgent first: a
// reconcile that stopped on an error, an owned object the API server
// refused, a missing Secret (the pods are not updated until it exists), an
// object in the way of an owned one, pods the Deployment cannot create, a
// stalled rollout, Redis unreachable.
func Degraded(sc *v1alpha1.SocketCluster, d *appsv1.Deployment, p Problems) metav1.Condition {
	if p.Error != nil {
		return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonReconcileError,
			"the operator stopped on an error and retries: "+truncate(p.Error.Error()))
	}
	if p.ApplyFailed != nil {
		return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonApplyFailed,
			"the API server refused an owned object (the operator retries; fix the spec if it is the cause): "+truncate(p.ApplyFailed.Error()))
	}
	if len(p.MissingSecrets) > 0 {
		return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonSecretMissing,
			"referenced Secret keys not found (pods are not updated until they exist): "+strings.Join(p.MissingSecrets, ", "))
	}
	if len(p.NotOwned) > 0 {
		return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonNameConflict,
			"objects with the names this SocketCluster needs exist and are not controlled by it (rename or delete them): "+strings.Join(p.NotOwned, ", "))
	}
	if d != nil {
		if c := deploymentCondition(d, appsv1.DeploymentReplicaFailure); c != nil && c.Status == corev1.ConditionTrue {
			return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonReplicaFailure, c.Message)
		}
		if c := rolloutStalled(d); c != nil {
			return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonProgressDeadlineExceeded, c.Message)
		}
	}
	if p.Redis != nil {
		return condition(sc, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonRedisUnreachable,
			fmt.Sprintf("cannot read connection counts from Redis, status.connections is from status.connectionsObservedAt: %v", p.Redis))
	}
	return condition(sc, v1alpha1.ConditionDegraded, false, v1alpha1.ReasonAsExpected, "nothing needs attention")
}

func truncate(msg string) string {
	if len(msg) <= maxErrorMessage {
		return msg
	}
	return strings.ToValidUTF8(msg[:maxErrorMessage], "") + "..."
}
