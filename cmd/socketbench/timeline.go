package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/socketcluster/socketcluster/internal/timeline"
)

// sampleEvery is the resolution of --timeline: fine enough to show a
// drain's pacing, coarse enough to cost the servers nothing.
const sampleEvery = 250 * time.Millisecond

// sampleConnections asks every server for its connections (GET /v1/server)
// until stop is called, which returns one series per server. A server
// that does not answer (killed, restarting) leaves a gap.
func (b *bench) sampleConnections(ctx context.Context, start time.Time) (stop func() []timeline.Series) {
	series := make([]timeline.Series, len(b.admins))
	for i, a := range b.admins {
		series[i].Name = a
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			for i, a := range b.admins {
				at := time.Since(start)
				// A busy server (draining 6,000 devices) may answer late; a
				// missed sample would be drawn as a gap, as if it were down.
				actx, acancel := context.WithTimeout(ctx, time.Second)
				info, err := b.admin(a).Server(actx)
				acancel()
				if err == nil && info.Name != "" {
					series[i].Name = info.Name
				}
				series[i].Points = append(series[i].Points, timeline.Point{At: at, Value: float64(info.Connections), Gap: err != nil})
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() []timeline.Series {
		cancel()
		wg.Wait()
		return series
	}
}

// writeTimeline draws the run's connections per server, with the moments
// the load and the storm began.
func (b *bench) writeTimeline(series []timeline.Series, start, loadStart time.Time, sum *Summary) error {
	c := timeline.Chart{
		Title:   fmt.Sprintf("socketbench: %d %s devices on %d servers", b.o.connections, b.o.transport, len(b.admins)),
		YLabel:  "connections per server",
		Series:  series,
		Markers: []timeline.Marker{{At: loadStart.Sub(start), Label: "load"}},
	}
	if sum.StormUnixNano != 0 {
		c.Markers = append(c.Markers, timeline.Marker{At: time.Unix(0, sum.StormUnixNano).Sub(start), Label: string(b.o.storm)})
	}
	f, err := os.Create(b.o.timeline)
	if err != nil {
		return err
	}
	if err := c.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
