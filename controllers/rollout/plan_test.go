package rollout_test

import (
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/rollout"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// base: revision b replaces a, 4 replicas, 2 new pods at a time, a load
// balancer that takes 30s, a drain timeout of 60s.
func base() rollout.Input {
	return rollout.Input{Desired: "b", Replicas: 4, Surge: 2, Active: "a", ActiveSince: t0.Add(-time.Hour),
		OldDeployments: 1, OldPods: 4, OldConnections: 800, Now: t0, Deregistration: 30 * time.Second, DrainTimeout: time.Minute,
		Drains: rollout.Drains{Drain: []string{"a-1"}}}
}

func TestRolloutSteps(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		mod                        func(*rollout.Input)
		phase                      string
		newRep                     int32
		active                     string
		switched, drain, deleteOld bool
	}{
		{"fresh cluster: nothing to protect", func(in *rollout.Input) { in.OldDeployments, in.OldPods, in.Active = 0, 0, "" },
			v1alpha1.ReasonNoOldRevision, 4, "b", true, false, false},
		{"steady", func(in *rollout.Input) { in.OldDeployments, in.OldPods, in.Active = 0, 0, "b" },
			v1alpha1.ReasonNoOldRevision, 4, "b", false, false, false},
		{"new revision starts maxSurge pods at a time", func(in *rollout.Input) {},
			v1alpha1.ReasonStartingRevision, 2, "a", false, false, false},
		{"then the next maxSurge", func(in *rollout.Input) { in.NewReady = 2 },
			v1alpha1.ReasonStartingRevision, 4, "a", false, false, false},
		{"a scale-up not yet seen by the Deployment is kept", func(in *rollout.Input) { in.NewReady, in.NewReplicas = 0, 4 },
			v1alpha1.ReasonStartingRevision, 4, "a", false, false, false},
		{"never more than replicas", func(in *rollout.Input) { in.NewReady = 3 },
			v1alpha1.ReasonStartingRevision, 4, "a", false, false, false},
		{"all new pods ready: switch at once", func(in *rollout.Input) { in.NewReady = 4 },
			v1alpha1.ReasonDeregistering, 4, "b", true, false, false},
		{"a cluster from before ReconnectOnce switches the same way", func(in *rollout.Input) { in.Active, in.NewReady = "", 4 },
			v1alpha1.ReasonDeregistering, 4, "b", true, false, false},
		{"no drain before the load balancer noticed", func(in *rollout.Input) { in.Active, in.ActiveSince, in.NewReady = "b", t0.Add(-29*time.Second), 4 },
			v1alpha1.ReasonDeregistering, 4, "b", false, false, false},
		{"drain after it", func(in *rollout.Input) { in.Active, in.ActiveSince, in.NewReady = "b", t0.Add(-30*time.Second), 4 },
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, true, false},
		{"unknown counts keep the old Deployment", func(in *rollout.Input) {
			in.Active, in.ActiveSince, in.OldConnections = "b", t0.Add(-40*time.Second), -1
		},
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, true, false},
		{"empty old pods: delete", func(in *rollout.Input) { in.Active, in.OldConnections = "b", 0 },
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, true, true},
		{"drain timeout passed: delete", func(in *rollout.Input) {
			in.Active, in.ActiveSince, in.Drains = "b", t0.Add(-90*time.Second), rollout.Drains{}
		},
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, false, true},
		{"the last drain's timeout passed: delete", func(in *rollout.Input) {
			in.Active, in.Drains = "b", rollout.Drains{LastStart: t0.Add(-time.Minute)}
		},
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, false, true},
		{"the others wait for the canary, whatever the time", func(in *rollout.Input) {
			in.Active, in.ActiveSince, in.Drains = "b", t0.Add(-time.Hour), rollout.Drains{Held: true, LastStart: t0.Add(-time.Hour), Message: "waiting"}
		},
			v1alpha1.ReasonDrainingOldRevision, 4, "b", false, false, false},
		{"the canary's devices did not come back: paused", func(in *rollout.Input) {
			in.Active, in.Drains = "b", rollout.Drains{Held: true, Paused: true, LastStart: t0.Add(-time.Hour), Message: "below 90%"}
		},
			v1alpha1.ReasonDevicesNotReturning, 4, "b", false, false, false},
		{"a new revision during a drain waits for its pods", func(in *rollout.Input) { in.Desired, in.Active = "c", "b" },
			v1alpha1.ReasonStartingRevision, 2, "b", false, false, false},
		{"scaled to zero switches at once", func(in *rollout.Input) { in.Replicas = 0 },
			v1alpha1.ReasonDeregistering, 0, "b", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			tc.mod(&in)
			st := rollout.Plan(in)
			if st.Phase != tc.phase || st.NewReplicas != tc.newRep || st.Active != tc.active || st.Switched != tc.switched || (len(st.DrainPods) > 0) != tc.drain || st.DeleteOld != tc.deleteOld {
				t.Fatalf("got %+v", st)
			}
			if st.Message == "" {
				t.Error("no message")
			}
			if (st.Phase == v1alpha1.ReasonDeregistering || len(st.DrainPods) > 0) && !st.DeleteOld && st.RequeueAfter <= 0 {
				t.Errorf("waits on time but asks for no requeue: %+v", st)
			}
		})
	}
}

func TestPodRate(t *testing.T) {
	if r := rollout.PodRate(300, 3); r != 100 {
		t.Errorf("300/s over 3 pods: %v each", r)
	}
	if r := rollout.PodRate(0, 3); r != 0 {
		t.Errorf("no cluster rate: %v, want 0 (the pod's own pacing)", r)
	}
}
