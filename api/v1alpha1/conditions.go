package v1alpha1

// Condition types of a SocketCluster.
const (
	// ConditionAvailable is True while enough pods are ready to keep the
	// capacity the rollout promises (see rollout.maxUnavailable).
	ConditionAvailable = "Available"
	// ConditionProgressing is True while a rollout or scale is under way.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when something needs a person: a missing
	// Secret, pods that cannot be created, Redis unreachable for the stats.
	ConditionDegraded = "Degraded"
	// ConditionStoreDurable is False when the servers report that their
	// store can lose data (e.g. Redis without persistence, or a
	// maxmemory-policy that evicts keys), Unknown without fresh reports.
	ConditionStoreDurable = "StoreDurable"
)

// Reasons of the Available condition.
const (
	ReasonMinimumReplicasReady       = "MinimumReplicasReady"
	ReasonMinimumReplicasUnavailable = "MinimumReplicasUnavailable"
	ReasonScaledToZero               = "ScaledToZero"
	ReasonDeploymentNotFound         = "DeploymentNotFound"
)

// Reasons of the Progressing condition.
const (
	ReasonRolloutInProgress        = "RolloutInProgress"
	ReasonRolloutComplete          = "RolloutComplete"
	ReasonProgressDeadlineExceeded = "ProgressDeadlineExceeded"
)

// Reasons of the Degraded condition.
const (
	ReasonAsExpected       = "AsExpected"
	ReasonSecretMissing    = "SecretMissing"
	ReasonNameConflict     = "NameConflict"
	ReasonReplicaFailure   = "ReplicaFailure"
	ReasonRedisUnreachable = "RedisUnreachable"
	// ReasonApplyFailed: the API server refused an owned object.
	ReasonApplyFailed = "ApplyFailed"
	// ReasonReconcileError: the reconcile stopped on an error before it
	// could look at everything (reading Secrets or pods, creating the API
	// token Secret).
	ReasonReconcileError = "ReconcileError"
)

// Reasons of the StoreDurable condition.
const (
	ReasonStoreDurable     = "StoreDurable"
	ReasonStoreMayLoseData = "StoreMayLoseData"
	ReasonNoServerStats    = "NoServerStats"
)
