package v1alpha1

// ConditionBalanced is True while the pods that serve devices hold about
// the same number of connections (within spec.rebalance's thresholds).
const ConditionBalanced = "Balanced"

// Reasons of the Balanced condition.
const (
	// ReasonBalanced: no pod is further from the mean than the thresholds.
	ReasonBalanced = "Balanced"
	// ReasonRebalancing: a pod is further from the mean than the
	// thresholds; the fuller pods shed connections (or will, once the last
	// shed settled).
	ReasonRebalancing = "Rebalancing"
	// ReasonRebalanceDisabled: spec.rebalance.enabled is false, or the
	// cluster has no spec.autoscaling (rebalancing follows its scaling).
	ReasonRebalanceDisabled = "RebalanceDisabled"
	// ReasonCountsUnknown: not every serving pod is ready with a fresh
	// count, or a rollout or scaling is under way.
	ReasonCountsUnknown = "CountsUnknown"
)
