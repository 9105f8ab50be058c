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
	// ConditionTimingsSafe is False when the drain and heartbeat timings are
	// valid but risky with the load balancer: devices may be reset, or sent
	// back to the pod that drains (docs/load-balancers.md).
	ConditionTimingsSafe = "TimingsSafe"
	// ConditionDraining is True while a ReconnectOnce rollout has pods of
	// an old revision: starting the new one, waiting for the load balancer
	// after the switch, or draining the old pods; and while a scale-down
	// drains the pods it removes.
	ConditionDraining = "Draining"
)

// Reasons of the Draining condition, in the order a rollout goes through them.
const (
	// ReasonStartingRevision: the new revision's pods are coming up; the
	// old revision serves every device.
	ReasonStartingRevision = "StartingRevision"
	// ReasonDeregistering: the public Service selects the new revision;
	// the old pods keep their devices until the load balancer stopped
	// sending them new ones (drain.preStopWait).
	ReasonDeregistering = "Deregistering"
	// ReasonDrainingOldRevision: the old pods send GOAWAYs; their devices
	// reconnect to the new revision.
	ReasonDrainingOldRevision = "DrainingOldRevision"
	// ReasonNoOldRevision: every pod runs the active revision.
	ReasonNoOldRevision = "NoOldRevision"
	// ReasonScaleDown: the replicas to run fell; the least loaded pods
	// drain one at a time before the Deployment loses them.
	ReasonScaleDown = "ScaleDown"
	// ReasonDevicesNotReturning: the scale-down or rollout paused because the devices
	// of the pod drained last did not come back to the serving pods.
	ReasonDevicesNotReturning = "DevicesNotReturning"
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

// Reasons of the TimingsSafe condition. When several apply, the reason is
// the first in this order and the message names them all.
const (
	ReasonTimingsSafe = "TimingsSafe"
	// ReasonPreStopWaitTooShort: the first GOAWAY comes before the load
	// balancer stopped sending new connections, so devices may reconnect
	// to the pod that drains.
	ReasonPreStopWaitTooShort = "PreStopWaitTooShort"
	// ReasonDeregistrationDelayTooShort: the AWS NLB resets a pod's
	// connections before its grace period ends, i.e. possibly mid-drain.
	ReasonDeregistrationDelayTooShort = "DeregistrationDelayTooShort"
	// ReasonHeartbeatNearIdleTimeout: the heartbeat interval is within 20%
	// of the load balancer's idle timeout; a late ping drops the flow.
	ReasonHeartbeatNearIdleTimeout = "HeartbeatNearIdleTimeout"
)
