package socketserver_test

import (
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// The metrics the alerts are built on follow what happens to the devices
// held here: backlog and its age, resume failures, drain, store health.
func TestOperationsMetrics(t *testing.T) {
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", func(c *socketserver.Config) {
		c.AuditInterval = 20 * time.Millisecond
		c.StatsInterval = 20 * time.Millisecond
		c.StoreTimeout = 500 * time.Millisecond
	})
	// Series the rules use exist before their first event.
	_, body := api(t, srv, "GET", "/metrics", "")
	for _, s := range []string{`socketserver_errors_total{code="heartbeat_timeout"} 0`, `socketserver_resume_failures_total{reason="unavailable"} 0`,
		`socketserver_store_errors_total{op="audit"} 0`, `socketserver_closes_total{reason="timeout"} 0`, "socketserver_draining 0",
		"socketserver_drain_started_timestamp_seconds 0", "socketserver_drain_delay_seconds 0", "socketserver_drain_timeout_seconds 5", "socketserver_store_up 1", "process_max_fds "} {
		if !strings.Contains(body, s) {
			t.Errorf("/metrics lacks %q", s)
		}
	}

	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	var last uint64
	for range 3 {
		last = send(t, srv, "d", "m")
		c.deliver()
	}
	// Delivered but not acknowledged: pending, and aging while the ACK stands still.
	eventually(t, "3 pending", func() bool { return metric(t, srv, "socketserver_outbox_pending_messages") == 3 })
	eventually(t, "pending ages", func() bool { return metric(t, srv, "socketserver_outbox_oldest_pending_seconds") > 0 })
	c.ackStored(srv, "d", last-1)
	eventually(t, "1 pending after ack", func() bool { return metric(t, srv, "socketserver_outbox_pending_messages") == 1 })
	c.ackStored(srv, "d", last)
	eventually(t, "backlog gone", func() bool {
		return metric(t, srv, "socketserver_outbox_pending_messages") == 0 && metric(t, srv, "socketserver_outbox_oldest_pending_seconds") == 0
	})

	// A resume the store can serve is no failure; one it has no session for is.
	c2 := dial(t, srv.Addrs().TCP)
	if w := c2.welcome("d", last); !w.Resumed {
		t.Fatalf("not resumed: %+v", w)
	}
	c3 := dial(t, srv.Addrs().TCP)
	if w := c3.welcome("never-seen", 42); w.Resumed {
		t.Fatalf("resumed a session the store never had: %+v", w)
	}
	if n := metric(t, srv, `socketserver_resume_failures_total{reason="session_lost"}`); n != 1 {
		t.Fatalf("session_lost resume failures: %v, want 1", n)
	}

	// Redis gone: the store is down, a resume fails as unavailable.
	r.Kill()
	eventually(t, "store down", func() bool { return metric(t, srv, "socketserver_store_up") == 0 })
	c4 := dial(t, srv.Addrs().TCP)
	c4.hello("d", last)
	c4.expectError(protocol.CodeUnavailable)
	if n := metric(t, srv, `socketserver_resume_failures_total{reason="unavailable"}`); n != 1 {
		t.Fatalf("unavailable resume failures: %v, want 1", n)
	}
	if metric(t, srv, `socketserver_store_errors_total{op="stats"}`) == 0 {
		t.Fatal("failed stats writes not counted as store errors")
	}

	before := float64(time.Now().Unix())
	// A drain with a delay is draining (unready) from its start.
	if code, _ := api(t, srv, "POST", "/drain?delay=30s", ""); code/100 != 2 {
		t.Fatalf("drain: %d", code)
	}
	eventually(t, "draining", func() bool { return metric(t, srv, "socketserver_draining") == 1 })
	if d := metric(t, srv, "socketserver_drain_delay_seconds"); d != 30 {
		t.Fatalf("drain delay %v, want 30", d)
	}
	if ts := metric(t, srv, "socketserver_drain_started_timestamp_seconds"); ts < before {
		t.Fatalf("drain started at %v, before the drain (%v)", ts, before)
	}
}
