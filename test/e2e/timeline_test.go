//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/timeline"
)

// devicesPerPod samples, every half second from now until ctx ends, how
// many of devs each pod holds (as the devices' WELCOMEs say); stop waits
// for the end and gives one series per pod.
func devicesPerPod(ctx context.Context, devs []*device) (start time.Time, stop func() []timeline.Series) {
	start = time.Now()
	byPod := map[string]*timeline.Series{}
	var order []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			counts := map[string]int{}
			for _, d := range devs {
				d.mu.Lock()
				if d.connected {
					counts[d.server]++
				}
				d.mu.Unlock()
			}
			at := time.Since(start)
			for pod := range counts {
				if byPod[pod] == nil {
					byPod[pod] = &timeline.Series{Name: pod, Points: []timeline.Point{{At: at}}}
					order = append(order, pod)
				}
			}
			for _, pod := range order {
				s := byPod[pod]
				s.Points = append(s.Points, timeline.Point{At: at, Value: float64(counts[pod])})
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return start, func() []timeline.Series {
		wg.Wait()
		sort.Strings(order)
		out := make([]timeline.Series, len(order))
		for i, pod := range order {
			out[i] = *byPod[pod]
		}
		return out
	}
}

// writeTimeline draws series (sampled from start) as
// E2E_TIMELINE_DIR/name.svg when that is set (the README's pictures come
// from there), with a marker at each moment of marks after start. Pods are
// named without the SocketCluster's name, which they all begin with: the
// revision's hash and the pod's suffix remain.
func writeTimeline(t *testing.T, name, cluster, title string, start time.Time, series []timeline.Series, marks map[string]time.Time) {
	dir := os.Getenv("E2E_TIMELINE_DIR")
	if dir == "" || len(series) == 0 {
		return
	}
	for i := range series {
		series[i].Name = strings.TrimPrefix(series[i].Name, cluster+"-")
	}
	c := timeline.Chart{Title: title, YLabel: "devices per pod", Series: series}
	for label, at := range marks {
		if at.After(start) {
			c.Markers = append(c.Markers, timeline.Marker{At: at.Sub(start), Label: label})
		}
	}
	sort.Slice(c.Markers, func(i, j int) bool { return c.Markers[i].At < c.Markers[j].At })
	f, err := os.Create(filepath.Join(dir, name+".svg"))
	if err != nil {
		t.Errorf("timeline: %v", err)
		return
	}
	defer f.Close()
	if err := c.WriteSVG(f); err != nil {
		t.Errorf("timeline: %v", err)
	}
}
