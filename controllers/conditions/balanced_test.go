package conditions_test

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/autoscale"
	"github.com/socketcluster/socketcluster/controllers/conditions"
)

func TestBalanced(t *testing.T) {
	autoscaled := func(mod func(*v1alpha1.SocketCluster)) *v1alpha1.SocketCluster {
		sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Generation: 7}}
		sc.Spec.Autoscaling = &v1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 4, TargetConnectionsPerPod: 1000}
		if mod != nil {
			mod(sc)
		}
		return sc
	}
	measured := func(conns map[string]int64) *conditions.BalanceReport {
		b := autoscale.Measure(conns, autoscale.ThresholdsOf(v1alpha1.RebalanceSpec{}))
		return &conditions.BalanceReport{Balance: &b}
	}
	for _, tc := range []struct {
		name   string
		sc     *v1alpha1.SocketCluster
		report *conditions.BalanceReport
		status metav1.ConditionStatus
		reason string
		msg    string
	}{
		{"after a scale-up", autoscaled(nil), measured(map[string]int64{"a": 1000, "b": 0}), metav1.ConditionFalse,
			v1alpha1.ReasonRebalancing, "max 1000, mean 500, min 0 connections over 2 pods: a pod is more than 20% and 10 connections from the mean"},
		{"even", autoscaled(nil), measured(map[string]int64{"a": 510, "b": 490}), metav1.ConditionTrue,
			v1alpha1.ReasonBalanced, "max 510, mean 500, min 490 connections over 2 pods: within 20% or 10 connections of the mean"},
		{"disabled", autoscaled(func(sc *v1alpha1.SocketCluster) { sc.Spec.Rebalance.Enabled = ptr.To(false) }),
			measured(map[string]int64{"a": 1000, "b": 0}), metav1.ConditionUnknown, v1alpha1.ReasonRebalanceDisabled, "spec.rebalance.enabled is false"},
		{"no autoscaling", &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Generation: 7}}, nil, metav1.ConditionUnknown, v1alpha1.ReasonRebalanceDisabled, "spec.autoscaling"},
		{"counts unknown", autoscaled(nil), &conditions.BalanceReport{Why: "pod edge-b has no fresh connection count"},
			metav1.ConditionUnknown, v1alpha1.ReasonCountsUnknown, "pod edge-b has no fresh connection count"},
		{"not looked yet", autoscaled(nil), nil, metav1.ConditionUnknown, v1alpha1.ReasonCountsUnknown, "no connection counts yet"},
	} {
		got := conditions.Balanced(tc.sc, tc.report)
		check(t, tc.name, got, tc.status, tc.reason)
		if got.Type != v1alpha1.ConditionBalanced || got.ObservedGeneration != tc.sc.Generation || !strings.Contains(got.Message, tc.msg) {
			t.Errorf("%s: %+v, want a message with %q", tc.name, got, tc.msg)
		}
	}
}
