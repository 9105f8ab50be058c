package main

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestHistQuantiles(t *testing.T) {
	var a, b Hist
	for i := 1; i <= 1000; i++ {
		h := &a
		if i%2 == 0 {
			h = &b
		}
		h.Record(time.Duration(i) * time.Millisecond)
	}
	a.Add(b)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := a.Quantile(c.q)
		if math.Abs(float64(got-c.want))/float64(c.want) > 0.05 {
			t.Errorf("q%.2f = %s, want %s within 5%%", c.q, got, c.want)
		}
	}
	if a.N != 1000 {
		t.Errorf("N = %d", a.N)
	}
}

// A worker against a real in-process server: every device connects, and
// every accepted message and publish is accounted for.
func TestWorkerAccountsForEveryMessage(t *testing.T) {
	srv, err := socketserver.New(socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: "server-a", InsecureNoAuth: true}, store.NewMemory(), logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	w := newWorker(WorkerSpec{DevicePrefix: "t", Devices: 20, Addrs: []string{srv.Addrs().TCP}, Admins: []string{srv.Addrs().Admin},
		SourceIPs: []string{"127.0.0.2"}, DeliverRate: 200, PublishRate: 200, Payload: 32, PostConcurrency: 4,
		ConnectTimeout: 10 * time.Second, Duration: time.Second, Settle: 10 * time.Second})
	var ready bool
	r, err := w.run(context.Background(), func(m message) { ready = ready || m.Ready != nil })
	if err != nil {
		t.Fatal(err)
	}
	if !ready || r.Connected != 20 || r.ConnectedAtEnd != 20 {
		t.Fatalf("ready %t, connected %d, at end %d", ready, r.Connected, r.ConnectedAtEnd)
	}
	if r.Posted == 0 || r.Delivered != r.Posted || r.LostDownstream != 0 || r.DeliverLatency.N != r.Delivered {
		t.Fatalf("downstream: posted %d delivered %d lost %d latency samples %d", r.Posted, r.Delivered, r.LostDownstream, r.DeliverLatency.N)
	}
	if r.Published == 0 || r.PublishAcked != r.Published || r.PublishUnacked != 0 {
		t.Fatalf("upstream: published %d acked %d", r.Published, r.PublishAcked)
	}
	if len(r.PostFailures) != 0 || len(r.Disconnects) != 0 {
		t.Fatalf("failures %v, disconnects %v", r.PostFailures, r.Disconnects)
	}
}
