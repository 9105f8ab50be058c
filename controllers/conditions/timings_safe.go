package conditions

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// TimingsSafe is False when the derived timings are legal (CEL refuses the
// impossible ones) but risky with the SocketCluster's load balancer, with
// every risk in the message; True otherwise.
func TimingsSafe(sc *v1alpha1.SocketCluster) metav1.Condition {
	t := resources.TimingsFor(sc)
	p := resources.Provider(sc)
	var reasons, msgs []string
	add := func(reason, format string, args ...any) {
		reasons = append(reasons, reason)
		msgs = append(msgs, fmt.Sprintf(format, args...))
	}
	if p == v1alpha1.AWSNLB && t.PreStopWait < resources.AWSPreStopWaitMin {
		add(v1alpha1.ReasonPreStopWaitTooShort,
			"drain.preStopWait %s is below %s: the AWS Load Balancer Controller takes about 2 minutes to stop routing to a deregistered pod, so devices told to leave may come back to it",
			t.PreStopWait, resources.AWSPreStopWaitMin)
	}
	if p == v1alpha1.AWSNLB && t.DeregistrationDelay < t.GracePeriod {
		add(v1alpha1.ReasonDeregistrationDelayTooShort,
			"drain.deregistrationDelay %s is shorter than the grace period %s: the NLB resets the connections a pod still drains; remove it to get the grace period",
			t.DeregistrationDelay, t.GracePeriod)
	}
	if iv := sc.Spec.Heartbeat.Interval.Duration; t.IdleTimeout > 0 && iv*5 > t.IdleTimeout*4 {
		add(v1alpha1.ReasonHeartbeatNearIdleTimeout,
			"heartbeat.interval %s is within 20%% of the load balancer's idle timeout %s: one late ping and the balancer drops the connection",
			iv, t.IdleTimeout)
	}
	if len(reasons) == 0 {
		return condition(sc, v1alpha1.ConditionTimingsSafe, true, v1alpha1.ReasonTimingsSafe,
			fmt.Sprintf("preStop wait %s, grace period %s%s", t.PreStopWait, t.GracePeriod, idleNote(t)))
	}
	return condition(sc, v1alpha1.ConditionTimingsSafe, false, reasons[0], strings.Join(msgs, "; "))
}

func idleNote(t resources.Timings) string {
	if t.IdleTimeout == 0 {
		return ""
	}
	return ", idle timeout " + t.IdleTimeout.String()
}
