package conditions

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// maxWarningsShown bounds the message; the servers' logs have the rest.
const maxWarningsShown = 3

// StoreReport is what the servers published about their store: how many
// current pods published fresh stats, and their distinct warnings.
type StoreReport struct {
	Servers  int
	Warnings []string
}

// StoreDurable is False when a server says its store can lose data (Redis
// without persistence, an eviction policy that can drop sessions), with the
// first warnings in the message; True when fresh stats carry no warning;
// Unknown when there are no fresh stats (report nil: Redis could not be read).
func StoreDurable(sc *v1alpha1.SocketCluster, report *StoreReport) metav1.Condition {
	unknown := func(msg string) metav1.Condition {
		return metav1.Condition{
			Type: v1alpha1.ConditionStoreDurable, Status: metav1.ConditionUnknown,
			Reason: v1alpha1.ReasonNoServerStats, Message: msg, ObservedGeneration: sc.Generation,
		}
	}
	switch {
	case report == nil:
		return unknown("the servers' stats could not be read from Redis")
	case report.Servers == 0:
		return unknown("no pod published its stats to Redis in the last 30s")
	case len(report.Warnings) > 0:
		shown := report.Warnings[:min(len(report.Warnings), maxWarningsShown)]
		msg := strings.Join(shown, "; ")
		if more := len(report.Warnings) - len(shown); more > 0 {
			msg += fmt.Sprintf(" (and %d more)", more)
		}
		return condition(sc, v1alpha1.ConditionStoreDurable, false, v1alpha1.ReasonStoreMayLoseData, msg)
	}
	return condition(sc, v1alpha1.ConditionStoreDurable, true, v1alpha1.ReasonStoreDurable,
		fmt.Sprintf("%d servers report no way for their store to lose data", report.Servers))
}
