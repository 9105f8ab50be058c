package conditions

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/rollout"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

// Draining says where a ReconnectOnce rollout is: True from the start of a
// new revision until the old pods are gone. step is nil with Surge, whose
// pods drain one by one inside the Deployment's rolling update. Outside a
// rollout it is True while a scale-down drains the pods it removes
// (scaleDown is nil when none could run).
func Draining(sc *v1alpha1.SocketCluster, step *rollout.Step, scaleDown *scaledown.Step) metav1.Condition {
	if (step == nil || step.Phase == v1alpha1.ReasonNoOldRevision) && scaleDown != nil && scaleDown.Active() {
		return condition(sc, v1alpha1.ConditionDraining, true, scaleDown.Phase, scaleDown.Message)
	}
	if step == nil {
		return condition(sc, v1alpha1.ConditionDraining, false, v1alpha1.ReasonNoOldRevision,
			"rollout.strategy is Surge: the Deployment drains old pods as it replaces them")
	}
	return condition(sc, v1alpha1.ConditionDraining, step.Phase != v1alpha1.ReasonNoOldRevision, step.Phase, step.Message)
}
