package rollout

import (
	"fmt"
	"time"

	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

// Drains is the rollout gate's decision: which old pods drain now.
type Drains struct {
	// Drain are the old pods whose drain starts now; Before the serving
	// connections to record on them.
	Drain  []string
	Before int64
	// Held: old pods wait for the devices of the first one (the canary)
	// to come back; Paused: they did not within the window.
	Held, Paused bool
	Message      string
	// LastStart is when the last drain of an old pod started (zero: none).
	LastStart time.Time
}

// Gate decides the drains of a ReconnectOnce rollout's old pods. With the
// gate on (a threshold above 0) one old pod drains first, the least
// loaded; the others drain together once its devices came back, so that a
// new revision that loses devices costs one pod's devices, not all of
// them; a rollout whose canary's devices do not come back within the
// window pauses. With the gate off every old pod drains at once. serving
// are the connections of the ready pods that do not drain (-1: unknown).
func Gate(old []scaledown.Pod, serving int64, g scaledown.Gate) Drains {
	var d Drains
	var pending []scaledown.Pod
	for _, p := range old {
		switch {
		case !p.DrainStarted.IsZero():
			d.LastStart = maxTime(d.LastStart, p.DrainStarted)
		case p.Ready:
			pending = append(pending, p)
		}
	}
	if len(pending) == 0 {
		return d
	}
	switch {
	case g.Threshold > 0 && d.LastStart.IsZero():
		canary := scaledown.Pick(pending, 1)[0]
		d.Drain, d.Before, d.Held = []string{canary.Name}, serving, len(pending) > 1
		d.Message = fmt.Sprintf("pod %s drains first; the other %d old pods once its devices came back", canary.Name, len(pending)-1)
		return d
	case g.Threshold > 0:
		if next, wait, paused := g.Next(old, serving, time.Time{}); next == nil {
			d.Held, d.Paused, d.Message = true, paused, wait
			return d
		}
	}
	for _, p := range pending {
		d.Drain = append(d.Drain, p.Name)
	}
	d.Before = serving
	return d
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
