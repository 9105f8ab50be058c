// Package scaledown decides how the pods of a SocketCluster go when the
// replicas to run fall: the least loaded ready pods are chosen, drained one
// at a time, and only then does the Deployment lose them. Lowering the
// Deployment at once would let the ReplicaSet kill pods and their devices
// reconnect all at once, maybe onto another pod that goes next.
// Decide is a pure function: the controller applies what it returns.
package scaledown

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

const (
	// AnnotationChosen marks a pod chosen to go (by a scale-down, or an
	// old pod of a ReconnectOnce rollout once it drains), so that the
	// choice survives an operator restart: "chosen" until its drain
	// starts, then the RFC 3339 time the drain started.
	AnnotationChosen = "sockets.socketcluster.io/scale-down"
	// AnnotationConnectionsBefore records, on a chosen pod whose drain
	// started, the connections the serving pods held just before: its
	// devices have come back once they hold the threshold of it again.
	AnnotationConnectionsBefore = "sockets.socketcluster.io/scale-down-connections-before"
	// AnnotationResume, on the SocketCluster, set to an RFC 3339 time
	// after a drain started, lets the scale-down go on although that
	// drain's devices did not come back (e.g. they went away for good).
	AnnotationResume = "sockets.socketcluster.io/resume-drain"

	// Chosen is AnnotationChosen's value before the drain starts.
	Chosen = "chosen"

	// DefaultThreshold is rollout.resumeThreshold's default (90%).
	DefaultThreshold = 0.9
	// ResumeGrace is how long, beyond drain.timeout and drain.jitter, the
	// devices of a drained pod may take to come back before the
	// scale-down pauses, when rollout.resumeWindow is empty.
	ResumeGrace = 30 * time.Second
)

// LowestDeletionCost is the pod-deletion-cost of a chosen pod: the
// ReplicaSet removes exactly the chosen pods, whatever the others hold.
var LowestDeletionCost = strconv.Itoa(math.MinInt32)

// Pod is what the controller saw of a pod of the revision that serves.
type Pod struct {
	Name  string
	Ready bool
	// Connections is its published count, -1 when it published none.
	Connections int64
	// Chosen: it carries AnnotationChosen; DrainStarted is zero until its
	// drain started, Before is AnnotationConnectionsBefore then.
	Chosen       bool
	DrainStarted time.Time
	Before       int64
}

// Input is what the controller observed.
type Input struct {
	// Want are the replicas to run; Current the Deployment's replicas now.
	Want, Current int32
	// Pods are the live (not terminating) pods of the serving revision.
	Pods []Pod
	Now  time.Time
	// DrainTimeout is drain.timeout; ResumeWindow how long after the
	// start of a drain its devices may take to come back.
	DrainTimeout, ResumeWindow time.Duration
	// Threshold is the share (0 to 1) of the connections before a drain
	// the serving pods must hold again before the next pod drains; 0 lets
	// every drain follow the one before at once.
	Threshold float64
	// ResumedAt is AnnotationResume, zero when absent or invalid.
	ResumedAt time.Time
	// ShedUntil is when the pods of the last shed stop refusing new
	// devices: no drain starts before, or its devices would be refused
	// there and move twice.
	ShedUntil time.Time
}

// Step is what to do now.
type Step struct {
	// Replicas are the Deployment's replicas to apply.
	Replicas int32
	// Choose are the pods to mark chosen (with the lowest deletion cost).
	Choose []string
	// Drain is the chosen pod whose drain starts now, "" for none; Before
	// the serving connections to record on it.
	Drain  string
	Before int64
	// Unchoose are chosen pods no longer needed that never drained: they
	// get their mark and cost back. Delete are chosen pods no longer needed
	// that drain(ed): unready for good, the ReplicaSet replaces them.
	Unchoose, Delete []string
	// Phase is a reason of the Draining condition ("" when no scale-down
	// runs): ReasonScaleDown, or ReasonDevicesNotReturning when paused.
	Phase, Message string
	// RequeueAfter is when to look again, 0 for the usual refresh.
	RequeueAfter time.Duration
}

// Active tells whether a scale-down runs, during which nothing else may
// move devices (no shed).
func (s Step) Active() bool { return s.Phase != "" }

// Paused tells whether the scale-down waits for the devices of the last
// drain to come back.
func (s Step) Paused() bool { return s.Phase == v1alpha1.ReasonDevicesNotReturning }

// pollDrain is how often a drain's progress is read.
const pollDrain = 2 * time.Second

// Decide is the next step of a scale-down: choose the least loaded ready
// pods beyond Want, drain them one at a time, each only once the devices
// of the one before came back (or the user said to go on), and lower the
// Deployment once every chosen pod is empty or timed out. Raising Want
// mid-way gives back the pods still to drain and replaces those already
// drained (they are unready and empty: nothing moves twice).
func Decide(in Input) Step {
	var chosen, rest []Pod
	readyRest := 0
	for _, p := range in.Pods {
		if p.Chosen {
			chosen = append(chosen, p)
			continue
		}
		rest = append(rest, p)
		if p.Ready {
			readyRest++
		}
	}
	// The ReplicaSet removes unready pods first: only ready pods beyond
	// Want hold devices that have to move.
	need := max(0, readyRest+len(chosen)-int(in.Want))
	st := Step{Replicas: in.Want}
	if len(chosen) > need {
		st.Unchoose, st.Delete = giveBack(chosen, len(chosen)-need)
		chosen = slices.DeleteFunc(chosen, func(p Pod) bool {
			return slices.Contains(st.Unchoose, p.Name) || slices.Contains(st.Delete, p.Name)
		})
	}
	if in.Want >= in.Current || need == 0 {
		return st
	}
	st.Replicas = in.Current // held until the chosen pods are empty
	st.Phase = v1alpha1.ReasonScaleDown
	st.RequeueAfter = pollDrain
	if len(chosen) < need {
		for _, p := range Pick(rest, need-len(chosen)) {
			st.Choose = append(st.Choose, p.Name)
			chosen = append(chosen, Pod{Name: p.Name, Ready: true, Connections: p.Connections, Chosen: true})
		}
	}

	what := fmt.Sprintf("scaling down from %d to %d pods", in.Current, in.Want)
	g := in.gate()
	next, wait, paused := g.Next(chosen, Serving(in.Pods), in.ShedUntil)
	switch {
	case paused:
		st.Phase, st.Message, st.RequeueAfter = v1alpha1.ReasonDevicesNotReturning, "scale-down paused: "+wait, 0
		return st
	case wait != "":
		st.Message = what + ": " + wait
		return st
	case next != nil:
		st.Drain, st.Before = next.Name, Serving(in.Pods)
		st.Message = fmt.Sprintf("%s: pod %s drains (%s connections)", what, next.Name, connectionsText(next.Connections))
		return st
	}
	st.Replicas = in.Want
	st.Message = fmt.Sprintf("scaling down from %d to %d pods: the %d chosen pods are drained", in.Current, in.Want, len(chosen))
	return st
}

// Gate drains pods one at a time, each only once the devices of the one
// before came back (the scale-down's and the ReconnectOnce rollout's).
type Gate struct {
	Now time.Time
	// DrainTimeout bounds a drain; ResumeWindow is how long after the
	// start of a drain its devices may take to come back.
	DrainTimeout, ResumeWindow time.Duration
	// Threshold is the share (0 to 1) of the connections before a drain
	// that the serving pods must hold again; 0 turns the gate off.
	Threshold float64
	// ResumedAt lets every drain that started before it go on.
	ResumedAt time.Time
}

func (in Input) gate() Gate {
	return Gate{Now: in.Now, DrainTimeout: in.DrainTimeout, ResumeWindow: in.ResumeWindow, Threshold: in.Threshold, ResumedAt: in.ResumedAt}
}

// Next returns the pod of pods to drain now, the least loaded of those
// not drained yet; or why none drains yet (one drains, or the devices of
// the last one are not back, paused once its window passed); or nothing
// once every pod drained. serving are the connections of the ready pods
// that do not drain (-1: unknown); no drain starts before notBefore.
func (g Gate) Next(pods []Pod, serving int64, notBefore time.Time) (next *Pod, wait string, paused bool) {
	var last *Pod // the drain that started last
	var pending []Pod
	for i := range pods {
		p := &pods[i]
		if p.DrainStarted.IsZero() {
			pending = append(pending, *p)
			continue
		}
		if !(p.Connections == 0 || !g.Now.Before(p.DrainStarted.Add(g.DrainTimeout))) {
			return nil, fmt.Sprintf("pod %s drains, %s left", p.Name, connectionsText(p.Connections)), false
		}
		if last == nil || p.DrainStarted.After(last.DrainStarted) {
			last = p
		}
	}
	if last != nil && !Recovered(last.Before, serving, g.Threshold) && !g.ResumedAt.After(last.DrainStarted) {
		if g.Now.Before(last.DrainStarted.Add(g.ResumeWindow)) {
			return nil, fmt.Sprintf("waiting for the devices of pod %s to come back (%s of %d)", last.Name, connectionsText(serving), last.Before), false
		}
		return nil, fmt.Sprintf("the serving pods hold %s connections, below %.0f%% of the %d before pod %s drained; "+
			"it goes on once they come back, or after `kubectl annotate socketcluster <name> %s=$(date -u +%%FT%%TZ) --overwrite`",
			connectionsText(serving), g.Threshold*100, last.Before, last.Name, AnnotationResume), true
	}
	if len(pending) == 0 {
		return nil, "", false
	}
	if g.Now.Before(notBefore) {
		return nil, fmt.Sprintf("the next drain waits until %s, when the pods of the last shed accept devices again", notBefore.Format(time.RFC3339)), false
	}
	picked := Pick(pending, 1)
	if len(picked) == 0 {
		return nil, "", false // unready pods hold no devices to move
	}
	return &picked[0], "", false
}

// Pick returns the n least loaded ready pods, fewest connections first
// (pods with no count last, then by name, so that the choice is stable).
func Pick(pods []Pod, n int) []Pod {
	var ready []Pod
	for _, p := range pods {
		if p.Ready {
			ready = append(ready, p)
		}
	}
	slices.SortFunc(ready, func(a, b Pod) int {
		return cmp.Or(cmp.Compare(load(a), load(b)), cmp.Compare(a.Name, b.Name))
	})
	return ready[:min(n, len(ready))]
}

// Recovered tells whether the serving pods, now holding after
// connections (-1: unknown), hold the threshold share of before again.
func Recovered(before, after int64, threshold float64) bool {
	return threshold <= 0 || (after >= 0 && float64(after) >= threshold*float64(before))
}

func load(p Pod) int64 {
	if p.Connections < 0 {
		return math.MaxInt64
	}
	return p.Connections
}

// Serving sums the ready pods that do not drain, -1 when one
// of them published no count.
func Serving(pods []Pod) int64 {
	var sum int64
	for _, p := range pods {
		if !p.Ready || !p.DrainStarted.IsZero() {
			continue
		}
		if p.Connections < 0 {
			return -1
		}
		sum += p.Connections
	}
	return sum
}

// giveBack picks n chosen pods to give back: those that never drained
// first (the most loaded first), then the drains that started last.
func giveBack(chosen []Pod, n int) (unchoose, del []string) {
	sorted := slices.Clone(chosen)
	slices.SortFunc(sorted, func(a, b Pod) int {
		if a.DrainStarted.IsZero() != b.DrainStarted.IsZero() {
			if a.DrainStarted.IsZero() {
				return -1
			}
			return 1
		}
		return cmp.Or(b.DrainStarted.Compare(a.DrainStarted), cmp.Compare(load(b), load(a)), cmp.Compare(a.Name, b.Name))
	})
	for _, p := range sorted[:n] {
		if p.DrainStarted.IsZero() {
			unchoose = append(unchoose, p.Name)
		} else {
			del = append(del, p.Name)
		}
	}
	return unchoose, del
}

func connectionsText(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return strconv.FormatInt(n, 10)
}
