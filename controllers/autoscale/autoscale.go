// Package autoscale decides a SocketCluster's replicas from its connections
// (spec.autoscaling) and which pods shed connections when they are uneven.
// Both are pure functions of what the controller observed.
package autoscale

import (
	"fmt"
	"math"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Input is what the controller observed.
type Input struct {
	Spec v1alpha1.AutoscalingSpec
	// Current is the replicas the autoscaler decided last (spec.replicas
	// before its first decision).
	Current int32
	// Connections is what the pods hold; Known is false when some running
	// pod published no fresh count (or Redis was not read): the replicas
	// then stay as they are.
	Connections int64
	Known       bool
	// LowSince is when the recommendation fell below Current, or nil.
	LowSince *time.Time
	Now      time.Time
}

// Decision is the replicas to run and the state to keep.
type Decision struct {
	Replicas, Recommendation int32
	LowSince                 *time.Time
	Message                  string
}

// Decide scales up at once and down only once the recommendation stayed
// below the replicas for the whole stabilization window: a removed pod's
// devices all reconnect, so scaling down on a dip costs more than it saves.
func Decide(in Input) Decision {
	s := in.Spec
	current := min(max(in.Current, s.MinReplicas), s.MaxReplicas)
	if !in.Known {
		return Decision{Replicas: current, LowSince: in.LowSince, Message: "no fresh connection count from every pod: replicas kept"}
	}
	target := int64(max(s.TargetConnectionsPerPod, 1))
	rec := int32(min(max((in.Connections+target-1)/target, int64(s.MinReplicas)), int64(s.MaxReplicas)))
	d := Decision{Replicas: current, Recommendation: rec}
	switch {
	case rec >= current:
		d.Replicas = rec
		d.Message = fmt.Sprintf("%d connections, %d per pod: %d pods", in.Connections, target, rec)
	case in.LowSince == nil:
		d.LowSince = &in.Now
		d.Message = fmt.Sprintf("%d connections would need %d pods; scaling down after %s", in.Connections, rec, s.ScaleDownStabilization.Duration)
	case in.Now.Sub(*in.LowSince) >= s.ScaleDownStabilization.Duration:
		d.Replicas = rec
		d.Message = fmt.Sprintf("%d connections needed at most %d pods for %s: scaling down", in.Connections, rec, s.ScaleDownStabilization.Duration)
	default:
		d.LowSince = in.LowSince
		d.Message = fmt.Sprintf("%d connections would need %d pods; scaling down at %s", in.Connections, rec, in.LowSince.Add(s.ScaleDownStabilization.Duration).Format(time.RFC3339))
	}
	return d
}

// Imbalance is how far below the mean the emptiest pod may be before the
// others shed: 20%.
const Imbalance = 0.2

// minShed keeps small differences where they are: a shed moves devices.
const minShed = 10

// Rebalance returns how many connections each pod should shed (POST
// /shed) when the emptiest pod holds less than Imbalance below the mean
// (after a scale-up the new pods hold nothing). The shed devices reconnect
// through the load balancer, which spreads them evenly over all the pods,
// the fuller ones included; so every pod sheds what it holds above the
// emptiest one, which brings each to the mean in expectation in one round,
// each device moving at most once. conns holds every ready pod that serves
// devices; none while a rollout or a drain runs.
func Rebalance(conns map[string]int64) map[string]int {
	if len(conns) < 2 {
		return nil
	}
	var total int64
	least := int64(math.MaxInt64)
	for _, c := range conns {
		total += c
		least = min(least, c)
	}
	mean := float64(total) / float64(len(conns))
	if float64(least) >= mean*(1-Imbalance) || mean-float64(least) < minShed {
		return nil
	}
	out := map[string]int{}
	for n, c := range conns {
		if c-least >= minShed {
			out[n] = int(c - least)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
