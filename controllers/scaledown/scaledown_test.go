package scaledown_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func names(pods []scaledown.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

func TestPickLeastLoadedReadyFirst(t *testing.T) {
	pods := []scaledown.Pod{
		{Name: "a", Ready: true, Connections: 900},
		{Name: "b", Ready: true, Connections: -1}, // no count: last
		{Name: "c", Ready: false, Connections: 0}, // unready: never
		{Name: "d", Ready: true, Connections: 40},
		{Name: "e", Ready: true, Connections: 40}, // tie: by name
	}
	if got, want := names(scaledown.Pick(pods, 3)), []string{"d", "e", "a"}; !slices.Equal(got, want) {
		t.Fatalf("Pick 3 = %v, want %v", got, want)
	}
	if got, want := names(scaledown.Pick(pods, 9)), []string{"d", "e", "a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("Pick 9 = %v, want %v", got, want)
	}
}

func TestRecovered(t *testing.T) {
	for _, c := range []struct {
		before, after int64
		threshold     float64
		want          bool
	}{{1000, 900, 0.9, true}, {1000, 899, 0.9, false}, {1000, -1, 0.9, false}, {0, 0, 0.9, true}, {1000, 10, 0, true}, {1000, -1, 0, true}} {
		if got := scaledown.Recovered(c.before, c.after, c.threshold); got != c.want {
			t.Errorf("Recovered(%d, %d, %v) = %v, want %v", c.before, c.after, c.threshold, got, c.want)
		}
	}
}

func input(want, current int32, pods ...scaledown.Pod) scaledown.Input {
	return scaledown.Input{Want: want, Current: current, Pods: pods, Now: t0, DrainTimeout: time.Minute, ResumeWindow: 100 * time.Second, Threshold: 0.9}
}

func ready(name string, conns int64) scaledown.Pod {
	return scaledown.Pod{Name: name, Ready: true, Connections: conns}
}

func draining(name string, conns int64, started time.Time, before int64) scaledown.Pod {
	return scaledown.Pod{Name: name, Connections: conns, Chosen: true, DrainStarted: started, Before: before}
}

func TestScaleUpAndSteadyAreImmediate(t *testing.T) {
	for _, in := range []scaledown.Input{input(5, 3, ready("a", 1), ready("b", 2), ready("c", 3)), input(3, 3, ready("a", 1), ready("b", 2), ready("c", 3))} {
		st := scaledown.Decide(in)
		if st.Replicas != in.Want || st.Active() || st.Choose != nil || st.Drain != "" {
			t.Errorf("Decide(%d->%d) = %+v, want the Deployment at %d and nothing else", in.Current, in.Want, st, in.Want)
		}
	}
}

// Only ready pods hold devices: when the pods beyond Want are unready
// (or not even created), the Deployment is lowered at once.
func TestUnreadyPodsGoFirst(t *testing.T) {
	st := scaledown.Decide(input(2, 4, ready("a", 10), ready("b", 20), scaledown.Pod{Name: "c", Connections: -1}))
	if st.Replicas != 2 || st.Active() {
		t.Fatalf("Decide = %+v, want the Deployment at 2 at once", st)
	}
}

func TestScaleDownChoosesHoldsAndDrainsOneAtATime(t *testing.T) {
	in := input(2, 4, ready("a", 500), ready("b", 30), ready("c", 400), ready("d", 20))
	st := scaledown.Decide(in)
	if st.Replicas != 4 || st.Phase != v1alpha1.ReasonScaleDown || !slices.Equal(st.Choose, []string{"d", "b"}) || st.Drain != "d" || st.Before != 950 {
		t.Fatalf("first step %+v, want d and b chosen, d draining with 950 before, the Deployment held at 4", st)
	}

	// Not while the pods of a shed refuse devices.
	in.ShedUntil = t0.Add(time.Second)
	if st := scaledown.Decide(in); st.Drain != "" || st.Replicas != 4 || !slices.Equal(st.Choose, []string{"d", "b"}) {
		t.Fatalf("during a shed's refusal: %+v, want d and b chosen but no drain yet", st)
	}

	// d drains: nothing else happens.
	in = input(2, 4, ready("a", 500), scaledown.Pod{Name: "b", Ready: true, Connections: 30, Chosen: true}, ready("c", 400), draining("d", 5, t0.Add(-time.Second), 950))
	if st := scaledown.Decide(in); st.Replicas != 4 || st.Drain != "" || st.Choose != nil || !strings.Contains(st.Message, "pod d drains, 5 left") {
		t.Fatalf("while d drains: %+v", st)
	}

	// d is empty; the serving pods need 855 (90% of 950) to let b drain.
	in.Pods[3].Connections = 0
	in.Pods[0].Connections, in.Pods[2].Connections = 450, 400 // with b's 30: 880
	if st := scaledown.Decide(in); st.Drain != "b" || st.Before != 880 {
		t.Fatalf("d's devices back (880 of 950): %+v, want b to drain next", st)
	}
	in.Pods[0].Connections = 400 // 830 < 855
	if st := scaledown.Decide(in); st.Drain != "" || st.Phase != v1alpha1.ReasonScaleDown || st.Replicas != 4 {
		t.Fatalf("d's devices not back, within the window: %+v, want a wait", st)
	}
	in.Now = t0.Add(time.Minute + 40*time.Second)
	st = scaledown.Decide(in)
	if st.Drain != "" || !st.Paused() || st.Replicas != 4 || !strings.Contains(st.Message, scaledown.AnnotationResume) {
		t.Fatalf("d's devices not back after the window: %+v, want a pause", st)
	}
	// The user says to go on.
	in.ResumedAt = t0
	if st := scaledown.Decide(in); st.Drain != "b" {
		t.Fatalf("resumed: %+v, want b to drain", st)
	}
	in.ResumedAt = time.Time{}
	// The devices came back late: on again.
	in.Pods[0].Connections = 500
	if st := scaledown.Decide(in); st.Drain != "b" || st.Before != 930 {
		t.Fatalf("devices back after a pause: %+v, want b to drain", st)
	}
	// No gate.
	in.Pods[0].Connections, in.Threshold = 0, 0
	if st := scaledown.Decide(in); st.Drain != "b" {
		t.Fatalf("without a gate: %+v, want b to drain", st)
	}
	in.Threshold = 0.9

	// Both drained (b timed out with 3 left): the Deployment goes to 2.
	in.Pods[1] = draining("b", 3, t0.Add(-time.Minute), 830)
	in.Pods[0].Connections = 500
	if st := scaledown.Decide(in); st.Replicas != 2 || st.Drain != "" || st.Choose != nil {
		t.Fatalf("both drained: %+v, want the Deployment at 2", st)
	}
}

// The desired count goes back up mid-way: chosen pods not drained yet are
// given back; those that drain are replaced.
func TestScaleUpMidDrainGivesBack(t *testing.T) {
	pods := []scaledown.Pod{ready("a", 500), scaledown.Pod{Name: "b", Ready: true, Connections: 30, Chosen: true}, ready("c", 400), draining("d", 5, t0, 950)}
	st := scaledown.Decide(input(3, 4, pods...))
	if st.Replicas != 4 || !slices.Equal(st.Unchoose, []string{"b"}) || st.Delete != nil || st.Drain != "" {
		t.Fatalf("4->2 then 3: %+v, want b given back while d drains", st)
	}
	st = scaledown.Decide(input(4, 4, pods...))
	if st.Replicas != 4 || !slices.Equal(st.Unchoose, []string{"b"}) || !slices.Equal(st.Delete, []string{"d"}) || st.Active() {
		t.Fatalf("back to 4: %+v, want b given back, d replaced", st)
	}
	// After the Deployment was lowered, the chosen pod waiting for the
	// ReplicaSet is not given back.
	st = scaledown.Decide(input(3, 3, ready("a", 500), ready("b", 30), ready("c", 400), draining("d", 0, t0, 950)))
	if st.Unchoose != nil || st.Delete != nil || st.Active() {
		t.Fatalf("lowered: %+v, want nothing to do", st)
	}
}
