package rollout_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/controllers/rollout"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

func TestGate(t *testing.T) {
	g := scaledown.Gate{Now: t0, DrainTimeout: time.Minute, ResumeWindow: 2 * time.Minute, Threshold: 0.9}
	fresh := func() []scaledown.Pod {
		return []scaledown.Pod{{Name: "a-1", Ready: true, Connections: 700}, {Name: "a-2", Ready: true, Connections: 600},
			{Name: "a-3", Ready: true, Connections: 650}, {Name: "a-4", Connections: -1}} // a-4 is unready: nothing to drain
	}
	// The canary (a-2, drained at t0-30s with 1,950 serving before) is empty.
	canaryDone := func() []scaledown.Pod {
		p := fresh()
		p[1].Connections, p[1].DrainStarted, p[1].Before = 0, t0.Add(-30*time.Second), 1950
		return p
	}
	for _, tc := range []struct {
		name         string
		gate         func(scaledown.Gate) scaledown.Gate
		pods         []scaledown.Pod
		serving      int64
		drain        []string
		held, paused bool
		msg          string
	}{
		{"gate off: every old pod drains at once", func(g scaledown.Gate) scaledown.Gate { g.Threshold = 0; return g }, fresh(), 1950,
			[]string{"a-1", "a-2", "a-3"}, false, false, ""},
		{"the least loaded drains first, alone", nil, fresh(), 1950, []string{"a-2"}, true, false, "a-2 drains first"},
		{"the others wait while it drains", nil, func() []scaledown.Pod {
			p := canaryDone()
			p[1].Connections = 200
			return p
		}(), 1750, nil, true, false, "a-2 drains"},
		{"its devices came back: the others drain together", nil, canaryDone(), 1800, []string{"a-1", "a-3"}, false, false, ""},
		{"not back yet: wait within the window", nil, canaryDone(), 1300, nil, true, false, "waiting for the devices of pod a-2"},
		{"not back after the window: paused", func(g scaledown.Gate) scaledown.Gate { g.Now = t0.Add(2 * time.Minute); return g },
			canaryDone(), 1300, nil, true, true, "below 90%"},
		{"resumed by the annotation", func(g scaledown.Gate) scaledown.Gate { g.ResumedAt = t0; return g },
			canaryDone(), 1300, []string{"a-1", "a-3"}, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gg := g
			if tc.gate != nil {
				gg = tc.gate(g)
			}
			d := rollout.Gate(tc.pods, tc.serving, gg)
			slices.Sort(d.Drain)
			if !slices.Equal(d.Drain, tc.drain) || d.Held != tc.held || d.Paused != tc.paused || !strings.Contains(d.Message, tc.msg) {
				t.Fatalf("got %+v", d)
			}
			if len(d.Drain) > 0 && d.Before != tc.serving {
				t.Errorf("before %d, want the serving %d", d.Before, tc.serving)
			}
		})
	}
}
