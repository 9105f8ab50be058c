package conditions

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/autoscale"
)

// BalanceReport is what the rebalancer saw: the balance of the pods that
// serve devices, or (Balance nil) why their counts do not tell it now.
type BalanceReport struct {
	Balance *autoscale.Balance
	Why     string
}

// Balanced says whether the serving pods hold about the same number of
// connections, within spec.rebalance's thresholds; False while the fuller
// ones shed (Rebalancing), Unknown while the counts say nothing (a rollout,
// a scale, a pod without a fresh count) or rebalancing is off.
func Balanced(sc *v1alpha1.SocketCluster, r *BalanceReport) metav1.Condition {
	unknown := func(reason, msg string) metav1.Condition {
		return metav1.Condition{Type: v1alpha1.ConditionBalanced, Status: metav1.ConditionUnknown, Reason: reason,
			Message: msg, ObservedGeneration: sc.Generation}
	}
	switch {
	case !sc.Spec.Rebalance.RebalanceEnabled():
		return unknown(v1alpha1.ReasonRebalanceDisabled, "spec.rebalance.enabled is false: connections are never shed")
	case sc.Spec.Autoscaling == nil:
		return unknown(v1alpha1.ReasonRebalanceDisabled, "rebalancing follows spec.autoscaling, which is not set")
	case r == nil || r.Balance == nil:
		why := "no connection counts yet"
		if r != nil && r.Why != "" {
			why = r.Why
		}
		return unknown(v1alpha1.ReasonCountsUnknown, why)
	}
	b := *r.Balance
	th := autoscale.ThresholdsOf(sc.Spec.Rebalance)
	if b.Uneven {
		return condition(sc, v1alpha1.ConditionBalanced, false, v1alpha1.ReasonRebalancing,
			fmt.Sprintf("%s: a pod is more than %.0f%% and %d connections from the mean; the fuller pods shed down to it",
				b, th.Relative*100, th.Absolute))
	}
	return condition(sc, v1alpha1.ConditionBalanced, true, v1alpha1.ReasonBalanced,
		fmt.Sprintf("%s: within %.0f%% or %d connections of the mean", b, th.Relative*100, th.Absolute))
}
