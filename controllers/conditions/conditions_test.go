package conditions_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/conditions"
	"github.com/socketcluster/socketcluster/controllers/rollout"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

func cluster(replicas int32, maxUnavailable intstr.IntOrString) *v1alpha1.SocketCluster {
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Generation: 7}}
	sc.Spec.Replicas = ptr.To(replicas)
	sc.Spec.Rollout.MaxUnavailable = &maxUnavailable
	return sc
}

// deployment has settled at its spec (observedGeneration == generation).
func deployment(replicas, updated, ready, available int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Generation: 3},
		Status: appsv1.DeploymentStatus{
			ObservedGeneration: 3, Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: ready, AvailableReplicas: available, Conditions: conds,
		},
	}
}

func check(t *testing.T, name string, got metav1.Condition, status metav1.ConditionStatus, reason string) {
	t.Helper()
	if got.Status != status || got.Reason != reason {
		t.Errorf("%s: %s/%s (%s), want %s/%s", name, got.Status, got.Reason, got.Message, status, reason)
	}
	if got.ObservedGeneration != 7 {
		t.Errorf("%s: observedGeneration %d", name, got.ObservedGeneration)
	}
}

func TestAvailable(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	for _, tc := range []struct {
		name   string
		sc     *v1alpha1.SocketCluster
		d      *appsv1.Deployment
		status metav1.ConditionStatus
		reason string
	}{
		{"scaled to zero", cluster(0, intstr.FromInt32(0)), nil, T, v1alpha1.ReasonScaledToZero},
		{"no deployment", cluster(3, intstr.FromInt32(0)), nil, F, v1alpha1.ReasonDeploymentNotFound},
		{"all ready", cluster(3, intstr.FromInt32(0)), deployment(3, 3, 3, 3), T, v1alpha1.ReasonMinimumReplicasReady},
		{"one short, none may be missing", cluster(3, intstr.FromInt32(0)), deployment(3, 3, 2, 2), F, v1alpha1.ReasonMinimumReplicasUnavailable},
		{"one short, one may be missing", cluster(3, intstr.FromInt32(1)), deployment(3, 3, 2, 2), T, v1alpha1.ReasonMinimumReplicasReady},
		{"25% of 3 rounds down to 0", cluster(3, intstr.FromString("25%")), deployment(3, 3, 2, 2), F, v1alpha1.ReasonMinimumReplicasUnavailable},
		{"never with zero ready", cluster(1, intstr.FromString("100%")), deployment(1, 1, 0, 0), F, v1alpha1.ReasonMinimumReplicasUnavailable},
		{"old pods count as capacity", cluster(3, intstr.FromInt32(0)), deployment(4, 1, 3, 3), T, v1alpha1.ReasonMinimumReplicasReady},
	} {
		check(t, tc.name, conditions.Available(tc.sc, tc.d), tc.status, tc.reason)
	}
}

func TestProgressing(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	lagging := deployment(3, 3, 3, 3)
	lagging.Generation = 4
	stalled := deployment(4, 1, 3, 3, appsv1.DeploymentCondition{
		Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded", Message: "ReplicaSet edge-abc has timed out progressing.",
	})
	for _, tc := range []struct {
		name   string
		sc     *v1alpha1.SocketCluster
		d      *appsv1.Deployment
		status metav1.ConditionStatus
		reason string
	}{
		{"no deployment", cluster(3, intstr.FromInt32(0)), nil, F, v1alpha1.ReasonDeploymentNotFound},
		{"complete", cluster(3, intstr.FromInt32(0)), deployment(3, 3, 3, 3), F, v1alpha1.ReasonRolloutComplete},
		{"complete at zero", cluster(0, intstr.FromInt32(0)), deployment(0, 0, 0, 0), F, v1alpha1.ReasonRolloutComplete},
		{"spec not yet observed", cluster(3, intstr.FromInt32(0)), lagging, T, v1alpha1.ReasonRolloutInProgress},
		{"old pods remain", cluster(3, intstr.FromInt32(0)), deployment(4, 3, 4, 4), T, v1alpha1.ReasonRolloutInProgress},
		{"new pods not updated", cluster(3, intstr.FromInt32(0)), deployment(3, 1, 3, 3), T, v1alpha1.ReasonRolloutInProgress},
		{"scaling up", cluster(5, intstr.FromInt32(0)), deployment(5, 5, 3, 3), T, v1alpha1.ReasonRolloutInProgress},
		{"stalled", cluster(3, intstr.FromInt32(0)), stalled, F, v1alpha1.ReasonProgressDeadlineExceeded},
	} {
		check(t, tc.name, conditions.Progressing(tc.sc, tc.d, nil), tc.status, tc.reason)
	}
	// ReconnectOnce: a complete new revision still progresses while the
	// old one is there.
	sc := cluster(3, intstr.FromInt32(0))
	draining := &rollout.Step{Phase: v1alpha1.ReasonDrainingOldRevision, Message: "draining 3 old pods"}
	check(t, "old revision drains", conditions.Progressing(sc, deployment(3, 3, 3, 3), draining), T, v1alpha1.ReasonRolloutInProgress)
	check(t, "new revision stalled", conditions.Progressing(sc, stalled, &rollout.Step{Phase: v1alpha1.ReasonStartingRevision}), F, v1alpha1.ReasonProgressDeadlineExceeded)
	done := &rollout.Step{Phase: v1alpha1.ReasonNoOldRevision, Message: "every pod runs revision b"}
	check(t, "old revision gone", conditions.Progressing(sc, deployment(3, 3, 3, 3), done), F, v1alpha1.ReasonRolloutComplete)
}

func TestDraining(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	sc := cluster(3, intstr.FromInt32(0))
	check(t, "Surge", conditions.Draining(sc, nil, nil), F, v1alpha1.ReasonNoOldRevision)
	for _, phase := range []string{v1alpha1.ReasonStartingRevision, v1alpha1.ReasonDeregistering, v1alpha1.ReasonDrainingOldRevision} {
		got := conditions.Draining(sc, &rollout.Step{Phase: phase, Message: "m"}, &scaledown.Step{Phase: v1alpha1.ReasonScaleDown})
		check(t, phase, got, T, phase)
		if got.Message != "m" {
			t.Errorf("%s: message %q, want the step's", phase, got.Message)
		}
	}
	check(t, "done", conditions.Draining(sc, &rollout.Step{Phase: v1alpha1.ReasonNoOldRevision, Message: "m"}, &scaledown.Step{}), F, v1alpha1.ReasonNoOldRevision)
	for _, phase := range []string{v1alpha1.ReasonScaleDown, v1alpha1.ReasonDevicesNotReturning} {
		check(t, "Surge "+phase, conditions.Draining(sc, nil, &scaledown.Step{Phase: phase}), T, phase)
		check(t, "ReconnectOnce "+phase, conditions.Draining(sc, &rollout.Step{Phase: v1alpha1.ReasonNoOldRevision}, &scaledown.Step{Phase: phase}), T, phase)
	}
}

func TestDegraded(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	failing := deployment(2, 2, 2, 2, appsv1.DeploymentCondition{
		Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate", Message: "pods \"edge-x\" is forbidden: exceeded quota",
	})
	recovered := deployment(3, 3, 3, 3, appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionFalse})
	stalled := deployment(4, 1, 3, 3, appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"})
	missing := conditions.Problems{MissingSecrets: []string{"device-key/key"}}
	redisDown := conditions.Problems{Redis: errors.New("dial tcp 10.0.0.1:6379: connect: connection refused")}
	applyErr := errors.New(`apply NetworkPolicy edge: NetworkPolicy.networking.k8s.io "edge" is invalid: spec.ingress[1].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33"`)
	sc := cluster(3, intstr.FromInt32(0))
	for _, tc := range []struct {
		name   string
		d      *appsv1.Deployment
		p      conditions.Problems
		status metav1.ConditionStatus
		reason string
		msg    string
	}{
		{"healthy", deployment(3, 3, 3, 3), conditions.Problems{}, F, v1alpha1.ReasonAsExpected, ""},
		{"replica failure cleared", recovered, conditions.Problems{}, F, v1alpha1.ReasonAsExpected, ""},
		{"secret missing", nil, missing, T, v1alpha1.ReasonSecretMissing, "device-key/key"},
		{"secret first", failing, conditions.Problems{MissingSecrets: missing.MissingSecrets, Redis: redisDown.Redis}, T, v1alpha1.ReasonSecretMissing, "device-key/key"},
		{"name conflict", nil, conditions.Problems{NotOwned: []string{"Service edge-admin"}}, T, v1alpha1.ReasonNameConflict, "Service edge-admin"},
		{"replica failure", failing, redisDown, T, v1alpha1.ReasonReplicaFailure, "exceeded quota"},
		{"stalled", stalled, conditions.Problems{}, T, v1alpha1.ReasonProgressDeadlineExceeded, ""},
		{"redis down", deployment(3, 3, 3, 3), redisDown, T, v1alpha1.ReasonRedisUnreachable, "connection refused"},
		{"apply refused", failing, conditions.Problems{MissingSecrets: missing.MissingSecrets, ApplyFailed: applyErr}, T, v1alpha1.ReasonApplyFailed, "spec.ingress[1].from[0].ipBlock.cidr"},
		{"reconcile error", nil, conditions.Problems{ApplyFailed: applyErr, Error: errors.New("list pods: connection reset")}, T, v1alpha1.ReasonReconcileError, "list pods: connection reset"},
	} {
		got := conditions.Degraded(sc, tc.d, tc.p)
		check(t, tc.name, got, tc.status, tc.reason)
		if !strings.Contains(got.Message, tc.msg) {
			t.Errorf("%s: message %q lacks %q", tc.name, got.Message, tc.msg)
		}
	}
}

func TestDegradedMessageIsBounded(t *testing.T) {
	long := errors.New(strings.Repeat("é", 5000))
	got := conditions.Degraded(cluster(3, intstr.FromInt32(0)), nil, conditions.Problems{ApplyFailed: long})
	if len(got.Message) > 4096 || !utf8.ValidString(got.Message) {
		t.Errorf("message of %d bytes (valid UTF-8: %v), want a bounded, valid message", len(got.Message), utf8.ValidString(got.Message))
	}
}

func TestStoreDurable(t *testing.T) {
	T, F, U := metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown
	aof := "appendonly is off: a Redis restart loses every unacknowledged message"
	lru := "maxmemory-policy allkeys-lru can evict sessions"
	sc := cluster(3, intstr.FromInt32(0))
	for _, tc := range []struct {
		name   string
		report *conditions.StoreReport
		status metav1.ConditionStatus
		reason string
		msg    []string
	}{
		{"redis unreadable", nil, U, v1alpha1.ReasonNoServerStats, []string{"could not be read"}},
		{"no fresh stats", &conditions.StoreReport{}, U, v1alpha1.ReasonNoServerStats, []string{"30s"}},
		{"durable", &conditions.StoreReport{Servers: 3}, T, v1alpha1.ReasonStoreDurable, []string{"3 servers"}},
		{"one warning", &conditions.StoreReport{Servers: 3, Warnings: []string{aof}}, F, v1alpha1.ReasonStoreMayLoseData, []string{aof}},
		{"two warnings", &conditions.StoreReport{Servers: 1, Warnings: []string{aof, lru}}, F, v1alpha1.ReasonStoreMayLoseData, []string{aof + "; " + lru}},
		{"many warnings", &conditions.StoreReport{Servers: 1, Warnings: []string{"w1", "w2", "w3", "w4", "w5"}}, F, v1alpha1.ReasonStoreMayLoseData, []string{"w1; w2; w3 (and 2 more)"}},
	} {
		got := conditions.StoreDurable(sc, tc.report)
		if got.Type != v1alpha1.ConditionStoreDurable {
			t.Errorf("%s: type %s", tc.name, got.Type)
		}
		check(t, tc.name, got, tc.status, tc.reason)
		for _, m := range tc.msg {
			if !strings.Contains(got.Message, m) {
				t.Errorf("%s: message %q lacks %q", tc.name, got.Message, m)
			}
		}
	}
}
