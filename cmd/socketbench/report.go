package main

import (
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func (b *bench) print(out io.Writer, s *Summary) {
	o := b.o
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }
	scenario := ""
	if o.scenario != "" {
		scenario = "scenario " + o.scenario + ": "
	}
	fmt.Fprintf(out, "\nsocketbench: %s%d %s connections, %d server(s), %d source address(es), %d worker(s), payload %d B\n",
		scenario, o.connections, s.Transport, s.Servers, s.SourceIPs, s.Workers, o.payload)
	row("connections held", "%d of %d at the end (%d connected at least once)", s.ConnectedAtEnd, o.connections, s.Connected)
	if s.ConnectSeconds > 0 {
		row("connect rate", "%.0f/s (%d in %.1fs)", float64(s.Connected)/s.ConnectSeconds, s.Connected, s.ConnectSeconds)
	}
	for _, m := range s.Memory {
		if m.Connections == 0 {
			row("server "+m.Admin, "no connections when scraped")
			continue
		}
		row("server "+m.Admin, "%.0f conns: RSS %s (%s/conn over idle), Go heap %s (%s/conn over idle)",
			m.Connections, byteSize(m.RSSReady), byteSize((m.RSSReady-m.RSSBefore)/m.Connections),
			byteSize(m.HeapReady), byteSize((m.HeapReady-m.HeapBefore)/m.Connections))
	}
	if n := float64(s.Connected); n > 0 && s.ClientRSSReady > 0 {
		row("load tool (devices)", "%d connected: RSS %s (%s/device over idle), Go heap %s (%s/device), %.1f goroutines/device",
			s.Connected, byteSize(s.ClientRSSReady), byteSize((s.ClientRSSReady-s.ClientRSSBefore)/n),
			byteSize(s.ClientHeapReady), byteSize((s.ClientHeapReady-s.ClientHeapBefore)/n),
			float64(s.GoroutinesReady-s.GoroutinesBefore)/n)
	}
	if s.LoadSeconds > 0 {
		row("deliveries/s", "%.0f (%d delivered in %.1fs of load; target %.0f/s)", float64(s.LoadDelivered)/s.LoadSeconds, s.LoadDelivered, s.LoadSeconds, o.deliverRate)
		row("publishes/s", "%.0f (%d PUBACKed in %.1fs of load; target %.0f/s)", float64(s.LoadPublishAcked)/s.LoadSeconds, s.LoadPublishAcked, s.LoadSeconds, o.publishRate)
	}
	if msgs := float64(s.LoadDelivered + s.LoadPublishAcked); s.ServerCPUSeconds > 0 && msgs > 0 {
		us := func(sec float64) float64 { return sec / msgs * 1e6 }
		row("CPU in the load phase", "servers %.1fs, Redis %.1fs, load tool %.1fs of %d cores x %.0fs; per message: server %.1f µs, Redis %.1f µs, load tool %.1f µs",
			s.ServerCPUSeconds, s.RedisCPUSeconds, s.LoadCPUSeconds, runtime.NumCPU(), s.LoadSeconds,
			us(s.ServerCPUSeconds), us(s.RedisCPUSeconds), us(s.LoadCPUSeconds))
	}
	row("backend -> device latency", "%s", quantiles(&s.DeliverLatency))
	row("publish -> PUBACK latency", "%s", quantiles(&s.PublishLatency))
	if o.storm != stormOff {
		if s.StormUnixNano == 0 {
			row("storm: "+string(o.storm), "did not happen")
		} else {
			row("storm: "+string(o.storm), "%s", s.StormAction)
			if s.RestartSeconds > 0 {
				row("storm: servers listening again", "%.2fs after the SIGKILL", s.RestartSeconds)
			}
			back := "all back"
			if s.PendingResume > 0 {
				back = "last resume"
			}
			row("storm: "+back+" after", "%.2fs (%d devices affected, %d outages, %d resumed, %d not back)",
				s.StormSeconds, s.Affected, s.Outages, s.Resumed, s.PendingResume)
			row("storm: per device resume", "%s (disconnect -> WELCOME%s)", quantiles(&s.ResumeLatency),
				map[bool]string{true: ", includes the hinted jitter"}[o.storm == stormDrain])
			row("storm: of which HELLO", "%s (TCP connected -> WELCOME of the resuming connection)", quantiles(&s.HelloLatency))
		}
	}
	row("backend sends", "%d accepted, failed %s, not sent (posters busy) %d; %d delivered although their send failed",
		s.Posted, counts(s.PostFailures), s.PostSkipped, s.DeliveredUnaccepted)
	row("ambiguous sends", "%d resent with the same key (%d retries), %d answered duplicate, %d unknown outcomes after %d attempts",
		s.AmbiguousSends, s.SendRetries, s.DuplicateAnswers, s.UnknownOutcomes, sendAttempts)
	row("device errors by code", "%s", counts(s.ErrorCodes))
	row("disconnects by reason", "%s", counts(s.Disconnects))
	for _, k := range slices.Sorted(maps.Keys(s.DisconnectSamples)) {
		row("  e.g. "+k, "%s", s.DisconnectSamples[k])
	}
	row("duplicates dropped", "%d re-deliveries dropped by seq; %d messages delivered under two seqs (stored twice)", s.Duplicates, s.DeliveredTwice)
	row("publishes", "%d sent, %d PUBACKed, %d unacked at the end, %d retransmitted frames", s.Published, s.PublishAcked, s.PublishUnacked, s.Retransmits)
	if b.rdb != nil {
		row("upstream stream", "%d entries added (PUBACKed %d), %d duplicated", s.UpstreamStored, s.PublishAcked, s.UpstreamDuplicates)
	}
	row("undelivered", "%d stored for devices not connected at the end (delivered on resume)", s.Undelivered)
	up := "not checked (no Redis)"
	if b.rdb != nil {
		up = fmt.Sprintf("%d upstream (PUBACKed, not in the stream)", s.UpstreamMissing)
	}
	row("LOST messages", "%d downstream, %s", s.LostDownstream, up)
	_ = tw.Flush()
}

func quantiles(h *Hist) string {
	if h.N == 0 {
		return "no samples"
	}
	r := func(d time.Duration) time.Duration {
		switch {
		case d >= time.Second:
			return d.Round(10 * time.Millisecond)
		case d >= time.Millisecond:
			return d.Round(10 * time.Microsecond)
		}
		return d.Round(time.Microsecond)
	}
	return fmt.Sprintf("p50 %s  p99 %s  p999 %s  max %s  (%d samples)", r(h.Quantile(0.5)), r(h.Quantile(0.99)),
		r(h.Quantile(0.999)), r(time.Duration(h.Max*float64(time.Microsecond))), h.N)
}

func counts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func byteSize(v float64) string {
	switch {
	case v >= 1<<30 || v <= -(1<<30):
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case v >= 1<<20 || v <= -(1<<20):
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10 || v <= -(1<<10):
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}
