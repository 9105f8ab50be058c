package resources

import (
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// PodDisruptionBudget limits how many pods node drains evict at once, so
// that the devices of evicted pods have somewhere to reconnect.
func PodDisruptionBudget(sc *v1alpha1.SocketCluster) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
		ObjectMeta: objectMeta(sc, sc.Name),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: sc.Spec.PodDisruptionBudget.MaxUnavailable,
			Selector:       &metav1.LabelSelector{MatchLabels: SelectorLabels(sc)},
			// A pod that is not ready serves nobody: evicting it must not
			// block a node drain.
			UnhealthyPodEvictionPolicy: ptr.To(policyv1.AlwaysAllow),
		},
	}
}
