package conditions_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/conditions"
)

// timed is a SocketCluster with the CRD's defaults for the fields the
// timings read.
func timed(p v1alpha1.LoadBalancerProvider, mod func(*v1alpha1.SocketClusterSpec)) *v1alpha1.SocketCluster {
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Generation: 7}}
	s := &sc.Spec
	s.Service.Type = corev1.ServiceTypeLoadBalancer
	if p != "" {
		s.Service.LoadBalancer = &v1alpha1.LoadBalancerSpec{Provider: p}
	}
	s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 15 * time.Second}, metav1.Duration{Duration: 45 * time.Second}
	s.Drain.Timeout = metav1.Duration{Duration: time.Minute}
	if mod != nil {
		mod(s)
	}
	return sc
}

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

func TestTimingsSafe(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	for _, tc := range []struct {
		name    string
		sc      *v1alpha1.SocketCluster
		status  metav1.ConditionStatus
		reason  string
		mention []string
	}{
		{"generic defaults", timed("", nil), T, v1alpha1.ReasonTimingsSafe, []string{"preStop wait 5s", "grace period 1m20s"}},
		{"aws-nlb defaults", timed(v1alpha1.AWSNLB, nil), T, v1alpha1.ReasonTimingsSafe, []string{"idle timeout 5m50s"}},
		{"gke defaults", timed(v1alpha1.GKE, nil), T, v1alpha1.ReasonTimingsSafe, nil},
		{"azure defaults", timed(v1alpha1.Azure, nil), T, v1alpha1.ReasonTimingsSafe, []string{"idle timeout 4m0s"}},
		{"aws-nlb, wait 60s", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) { s.Drain.PreStopWait = dur(time.Minute) }),
			F, v1alpha1.ReasonPreStopWaitTooShort, []string{"1m0s is below 2m0s"}},
		{"aws-nlb, wait 120s is enough", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) { s.Drain.PreStopWait = dur(2 * time.Minute) }),
			T, v1alpha1.ReasonTimingsSafe, nil},
		{"a short wait is fine without AWS", timed(v1alpha1.GKE, func(s *v1alpha1.SocketClusterSpec) { s.Drain.PreStopWait = dur(time.Second) }),
			T, v1alpha1.ReasonTimingsSafe, nil},
		{"aws-nlb, delay below the grace period", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) { s.Drain.DeregistrationDelay = dur(150 * time.Second) }),
			F, v1alpha1.ReasonDeregistrationDelayTooShort, []string{"2m30s is shorter than the grace period 3m25s"}},
		{"aws-nlb, delay equal to the grace period", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) { s.Drain.DeregistrationDelay = dur(205 * time.Second) }),
			T, v1alpha1.ReasonTimingsSafe, nil},
		{"a delay means nothing without AWS", timed("", func(s *v1alpha1.SocketClusterSpec) { s.Drain.DeregistrationDelay = dur(time.Second) }),
			T, v1alpha1.ReasonTimingsSafe, nil},
		{"aws-nlb, heartbeat 300s of 350s", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) {
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 300 * time.Second}, metav1.Duration{Duration: 900 * time.Second}
		}), F, v1alpha1.ReasonHeartbeatNearIdleTimeout, []string{"5m0s is within 20%", "5m50s"}},
		{"aws-nlb, heartbeat 280s is 80% of 350s", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) {
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 280 * time.Second}, metav1.Duration{Duration: 900 * time.Second}
		}), T, v1alpha1.ReasonTimingsSafe, nil},
		{"azure, heartbeat near the 100-minute cap", timed(v1alpha1.Azure, func(s *v1alpha1.SocketClusterSpec) {
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 90 * time.Minute}, metav1.Duration{Duration: 3 * time.Hour}
		}), F, v1alpha1.ReasonHeartbeatNearIdleTimeout, []string{"1h40m0s"}},
		{"gke, heartbeat near conntrack's 10 minutes", timed(v1alpha1.GKE, func(s *v1alpha1.SocketClusterSpec) {
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 9 * time.Minute}, metav1.Duration{Duration: 30 * time.Minute}
		}), F, v1alpha1.ReasonHeartbeatNearIdleTimeout, nil},
		{"no idle timeout without a preset", timed("", func(s *v1alpha1.SocketClusterSpec) {
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: time.Hour}, metav1.Duration{Duration: 3 * time.Hour}
		}), T, v1alpha1.ReasonTimingsSafe, nil},
		{"every risk at once: first reason, all messages", timed(v1alpha1.AWSNLB, func(s *v1alpha1.SocketClusterSpec) {
			s.Drain.PreStopWait, s.Drain.DeregistrationDelay = dur(30*time.Second), dur(40*time.Second)
			s.Heartbeat.Interval, s.Heartbeat.Timeout = metav1.Duration{Duration: 340 * time.Second}, metav1.Duration{Duration: 900 * time.Second}
		}), F, v1alpha1.ReasonPreStopWaitTooShort, []string{"preStopWait 30s", "deregistrationDelay 40s", "heartbeat.interval 5m40s"}},
	} {
		got := conditions.TimingsSafe(tc.sc)
		check(t, tc.name, got, tc.status, tc.reason)
		if got.Type != v1alpha1.ConditionTimingsSafe {
			t.Errorf("%s: type %s", tc.name, got.Type)
		}
		for _, m := range tc.mention {
			if !strings.Contains(got.Message, m) {
				t.Errorf("%s: message %q lacks %q", tc.name, got.Message, m)
			}
		}
	}
}
