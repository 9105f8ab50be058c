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

// Thresholds say when pods are uneven (spec.rebalance).
type Thresholds struct {
	// Relative is how far from the mean a pod may be, as a fraction of it.
	Relative float64
	// Absolute is the fewest connections from the mean that count: a
	// shed moves devices, so small differences stay where they are.
	Absolute int64
}

// ThresholdsOf reads spec.rebalance (0 takes its default: 20%, 10).
func ThresholdsOf(s v1alpha1.RebalanceSpec) Thresholds {
	th := Thresholds{Relative: 0.2, Absolute: 10}
	if s.RelativeThreshold > 0 {
		th.Relative = float64(s.RelativeThreshold) / 100
	}
	if s.AbsoluteThreshold > 0 {
		th.Absolute = int64(s.AbsoluteThreshold)
	}
	return th
}

// Balance is how evenly the pods hold their connections.
type Balance struct {
	Pods     int
	Max, Min int64
	Mean     float64
	// Uneven: some pod is further from the mean than both thresholds.
	Uneven bool
}

func (b Balance) String() string {
	return fmt.Sprintf("max %d, mean %.0f, min %d connections over %d pods", b.Max, b.Mean, b.Min, b.Pods)
}

// Measure compares conns (per pod) with the thresholds.
func Measure(conns map[string]int64, th Thresholds) Balance {
	b := Balance{Pods: len(conns), Min: math.MaxInt64}
	if len(conns) == 0 {
		b.Min = 0
		return b
	}
	var total int64
	for _, c := range conns {
		total += c
		b.Max, b.Min = max(b.Max, c), min(b.Min, c)
	}
	b.Mean = float64(total) / float64(len(conns))
	far := func(c int64) bool {
		d := math.Abs(float64(c) - b.Mean)
		return d > b.Mean*th.Relative && d >= float64(th.Absolute)
	}
	b.Uneven = len(conns) > 1 && (far(b.Min) || far(b.Max))
	return b
}

// Shed is what one pod is asked to shed (POST /shed): Count connections,
// refusing new devices while it holds Target or more.
type Shed struct{ Count, Target int }

// Rebalance returns what each pod should shed when conns (every ready pod
// that serves devices; none while a rollout or a drain runs) are uneven:
// every pod above the mean sheds down to it (rounded up). While it holds
// its target it refuses new devices, so that the devices it sheds, and
// those the load balancer sends it meanwhile, go to the emptier pods:
// each device moves once, not back and forth, even behind a random L4
// balancer.
func Rebalance(conns map[string]int64, th Thresholds) map[string]Shed {
	b := Measure(conns, th)
	if !b.Uneven {
		return nil
	}
	target := int64(math.Ceil(b.Mean))
	out := map[string]Shed{}
	for n, c := range conns {
		if c > target {
			out[n] = Shed{Count: int(c - target), Target: int(target)}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// settle is how long after its last GOAWAY a shed's devices may still be
// reconnecting beyond their hint (a dial, a TLS handshake, a HELLO).
const settle = 5 * time.Second

// ShedTime is how long a pod takes to shed count connections and for the
// last of them to reconnect: at rate GOAWAYs per second (0: spread over
// 80% of the drain timeout, as the server does), plus the reconnect hint's
// jitter. A shed refuses new devices for as long, at most maxRefuse.
func ShedTime(count int, rate float64, drainTimeout, jitter, maxRefuse time.Duration) time.Duration {
	pace := drainTimeout * 8 / 10
	if rate > 0 {
		pace = time.Duration(float64(count) / rate * float64(time.Second))
	}
	return min(pace+jitter+settle, maxRefuse)
}
