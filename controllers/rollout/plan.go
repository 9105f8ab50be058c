// Package rollout decides each step of a ReconnectOnce (blue-green) rollout
// from what the controller observed. Plan is a pure function: the
// controller applies what it returns.
package rollout

import (
	"fmt"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Input is what the controller observed.
type Input struct {
	// Desired is the revision of the pod template the spec asks for.
	Desired string
	// Replicas is spec.replicas; Surge is how many new pods start at a
	// time (rollout.maxSurge resolved against replicas, at least 1).
	Replicas, Surge int32
	// NewReady counts the ready pods of the desired revision's Deployment,
	// once it has seen its latest spec (0 before); NewReplicas are its
	// replicas now (0 before it exists). A step never lowers them: a
	// Deployment that has not yet seen its last scale-up reports none ready.
	NewReady, NewReplicas int32
	// Active is the revision the public Service selects now; empty when it
	// selects every pod (a Surge cluster, or one from before ReconnectOnce).
	Active string
	// ActiveSince is when the Service switched to Active.
	ActiveSince time.Time
	// OldDeployments counts the Deployments of other revisions (the Surge
	// Deployment included); OldPods their pods.
	OldDeployments, OldPods int
	// OldConnections is what the old pods hold, or -1 when one of them
	// published no fresh count.
	OldConnections int64
	Now            time.Time
	// Deregistration is how long the load balancer takes to stop sending
	// new connections to a pod the Service no longer selects (the
	// preStop wait of the pods); DrainTimeout is drain.timeout.
	Deregistration, DrainTimeout time.Duration
	// Drains is the gate's decision on the old pods (see Gate).
	Drains Drains
}

// Step is what to do now.
type Step struct {
	// Phase is a reason of the Draining condition.
	Phase   string
	Message string
	// NewReplicas are the desired revision's Deployment's replicas.
	NewReplicas int32
	// Active is the revision the public Service must select.
	Active string
	// Switched: the Service selects Active from now on (record the time).
	Switched bool
	// DrainPods are the old pods whose drain starts now; Before is the
	// serving connections to record on them (the gate's reference).
	DrainPods []string
	Before    int64
	// DeleteOld: the old Deployments are empty (or their drain timed
	// out): delete them.
	DeleteOld bool
	// RequeueAfter is when to look again at the latest, 0 when only a
	// change of an owned object moves the rollout on.
	RequeueAfter time.Duration
}

// pollDrain is how often a drain's progress is read.
const pollDrain = 2 * time.Second

// Plan is the next step: the new revision comes up Surge pods at a time
// while the old one serves; once all of it is ready the Service switches
// to it at once; after the load balancer had time to notice, the old pods
// drain (into the new revision only, the only one the Service selects);
// once they are empty their Deployments go.
func Plan(in Input) Step {
	if in.OldDeployments == 0 {
		return Step{Phase: v1alpha1.ReasonNoOldRevision, NewReplicas: in.Replicas, Active: in.Desired, Switched: in.Active != in.Desired,
			Message: fmt.Sprintf("every pod runs revision %s", in.Desired)}
	}
	if in.Active != in.Desired {
		if in.NewReady >= in.Replicas {
			return Step{Phase: v1alpha1.ReasonDeregistering, NewReplicas: in.Replicas, Active: in.Desired, Switched: true, RequeueAfter: in.Deregistration,
				Message: fmt.Sprintf("the Service switched to revision %s; the old pods keep their devices for %s while the load balancer stops sending them new ones", in.Desired, in.Deregistration)}
		}
		return Step{Phase: v1alpha1.ReasonStartingRevision, NewReplicas: min(in.Replicas, max(in.NewReplicas, in.NewReady+max(in.Surge, 1))), Active: in.Active,
			Message: fmt.Sprintf("%d of %d pods of revision %s ready; the old revision serves every device", in.NewReady, in.Replicas, in.Desired)}
	}
	since := in.Now.Sub(in.ActiveSince)
	if since < in.Deregistration {
		return Step{Phase: v1alpha1.ReasonDeregistering, NewReplicas: in.Replicas, Active: in.Desired, RequeueAfter: in.Deregistration - since,
			Message: fmt.Sprintf("the Service selects revision %s; the old pods drain in %s, once the load balancer stopped sending them new devices", in.Desired, (in.Deregistration - since).Round(time.Second))}
	}
	d := in.Drains
	st := Step{Phase: v1alpha1.ReasonDrainingOldRevision, NewReplicas: in.Replicas, Active: in.Desired,
		DrainPods: d.Drain, Before: d.Before, RequeueAfter: pollDrain}
	start := d.LastStart // of the last drain; the pods close what is left at their timeout
	if start.IsZero() {
		start = in.ActiveSince.Add(in.Deregistration)
	}
	switch {
	case in.OldPods == 0 || in.OldConnections == 0:
		st.DeleteOld = true
		st.Message = fmt.Sprintf("the old pods are empty; deleting %d old Deployment(s)", in.OldDeployments)
	case d.Paused:
		st.Phase, st.RequeueAfter = v1alpha1.ReasonDevicesNotReturning, 0
		st.Message = "rollout paused: " + d.Message
	case d.Held:
		st.Message = fmt.Sprintf("draining old pods into revision %s: %s", in.Desired, d.Message)
	case len(d.Drain) == 0 && !in.Now.Before(start.Add(in.DrainTimeout)):
		st.DeleteOld = true
		st.Message = fmt.Sprintf("the drain timeout passed; deleting %d old Deployment(s)", in.OldDeployments)
	case in.OldConnections < 0:
		st.Message = fmt.Sprintf("draining %d old pods into revision %s", in.OldPods, in.Desired)
	default:
		st.Message = fmt.Sprintf("draining %d old pods into revision %s: %d connections left", in.OldPods, in.Desired, in.OldConnections)
	}
	return st
}

// PodRate shares the cluster-wide GOAWAY rate among the pods that drain
// at once; 0 (no cluster rate) leaves each pod its own pacing.
func PodRate(clusterRate int32, pods int) float64 {
	if clusterRate <= 0 || pods <= 0 {
		return 0
	}
	return float64(clusterRate) / float64(pods)
}
