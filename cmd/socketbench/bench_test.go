package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/client"
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

// runTestWorker runs a worker of 20 devices against a real in-process server
// (at addr, its TCP listener when empty; on admin for the backend API, when
// given) and returns its result.
func runTestWorker(t *testing.T, srv *socketserver.Server, addr, admin string, batch int) *Result {
	t.Helper()
	if addr == "" {
		addr = srv.Addrs().TCP
	}
	if admin == "" {
		admin = srv.Addrs().Admin
	}
	w := newWorker(WorkerSpec{DevicePrefix: "t", Devices: 20, Addrs: []string{addr}, Admins: []string{admin},
		SourceIPs: []string{"127.0.0.2"}, DeliverRate: 200, PublishRate: 200, Payload: 32, PostConcurrency: 4, PostBatch: batch,
		ConnectTimeout: 10 * time.Second, Duration: time.Second, Settle: 10 * time.Second, APIToken: testToken})
	var ready bool
	var r *Result
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := make(chan struct{})
	err := w.run(ctx, start, func(m message) {
		switch {
		case m.Ready != nil:
			ready = true
			close(start)
		case m.Result != nil:
			r = m.Result
			cancel() // the coordinator closes the worker's stdin
		}
	})
	if err != nil || r == nil {
		t.Fatalf("run: %v, result %v", err, r)
	}
	if !ready || r.Connected != 20 || r.ConnectedAtEnd != 20 {
		t.Fatalf("ready %t, connected %d, at end %d", ready, r.Connected, r.ConnectedAtEnd)
	}
	if r.Posted == 0 || r.Delivered != r.Posted || r.LostDownstream != 0 || r.DeliveredTwice != 0 || r.DeliveredUnaccepted != 0 ||
		r.UnknownOutcomes != 0 || r.DeliverLatency.N != r.Delivered {
		t.Fatalf("downstream: posted %d delivered %d lost %d twice %d unaccepted %d unknown %d latency samples %d, failures %v",
			r.Posted, r.Delivered, r.LostDownstream, r.DeliveredTwice, r.DeliveredUnaccepted, r.UnknownOutcomes, r.DeliverLatency.N, r.PostFailures)
	}
	if r.Published == 0 || r.PublishAcked != r.Published || r.PublishUnacked != 0 {
		t.Fatalf("upstream: published %d acked %d", r.Published, r.PublishAcked)
	}
	if len(r.PostFailures) != 0 || len(r.Disconnects) != 0 {
		t.Fatalf("failures %v, disconnects %v", r.PostFailures, r.Disconnects)
	}
	return r
}

const testToken = "bench-test-token"

func startTestServer(t *testing.T) *socketserver.Server {
	t.Helper()
	srv, err := socketserver.New(socketserver.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: "server-a", InsecureNoAuth: true, APIToken: testToken}, store.NewMemory(), logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv
}

// A worker against a real in-process server: every device connects, and
// every accepted message and publish is accounted for.
func TestWorkerAccountsForEveryMessage(t *testing.T) {
	for _, transport := range []string{"tcp", "ws", "sse", "grpc", "mqtt"} {
		t.Run(transport, func(t *testing.T) {
			srv := startTestServer(t)
			addr := map[string]string{"tcp": srv.Addrs().TCP, "ws": "ws://" + srv.Addrs().WS + "/ws",
				"sse": "http://" + srv.Addrs().WS + "/sse", "grpc": "grpc://" + srv.Addrs().GRPC,
				"mqtt": "mqtt://" + srv.Addrs().MQTT}[transport]
			r := runTestWorker(t, srv, addr, "", 1)
			if r.AmbiguousSends != 0 || r.SendRetries != 0 || r.DuplicateAnswers != 0 {
				t.Fatalf("ambiguous %d retries %d duplicates %d on a healthy server", r.AmbiguousSends, r.SendRetries, r.DuplicateAnswers)
			}
			if r.GoroutinesReady <= r.GoroutinesBefore || r.ClientHeapReady == 0 {
				t.Fatalf("client memory not measured: goroutines %d -> %d, heap %.0f", r.GoroutinesBefore, r.GoroutinesReady, r.ClientHeapReady)
			}
		})
	}
}

// Sends whose outcome is unknown (a 503, an answer lost after the server
// stored the message) are resent with the same key: every message arrives
// exactly once, and the counters show what happened.
func TestWorkerResendsAmbiguousSends(t *testing.T) {
	for _, batch := range []int{1, 4} {
		t.Run(fmt.Sprintf("batch %d", batch), func(t *testing.T) {
			srv := startTestServer(t)
			var n atomic.Int64
			flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				k := n.Add(1)
				if k%5 == 2 { // unavailable before it stored anything
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+srv.Addrs().Admin+r.URL.RequestURI(), bytes.NewReader(body))
				req.Header = r.Header.Clone()
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					w.WriteHeader(http.StatusBadGateway)
					return
				}
				defer resp.Body.Close()
				if k%5 == 4 { // stored, but the answer is lost
					nc, _, _ := w.(http.Hijacker).Hijack()
					nc.Close()
					return
				}
				w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
				w.WriteHeader(resp.StatusCode)
				_, _ = io.Copy(w, resp.Body)
			}))
			defer flaky.Close()
			r := runTestWorker(t, srv, "", flaky.Listener.Addr().String(), batch)
			if r.AmbiguousSends == 0 || r.SendRetries == 0 || r.DuplicateAnswers == 0 {
				t.Fatalf("ambiguous %d retries %d duplicates %d: the faults did not show", r.AmbiguousSends, r.SendRetries, r.DuplicateAnswers)
			}
			t.Logf("posted %d, ambiguous %d, retries %d, duplicate answers %d", r.Posted, r.AmbiguousSends, r.SendRetries, r.DuplicateAnswers)
		})
	}
}

func TestStormFlag(t *testing.T) {
	two := []string{"--spawn-servers", "2"}
	for _, c := range []struct {
		args []string
		want stormMode
		err  string // part of the expected error, if one is expected
	}{
		{args: two, want: stormOff},
		{args: append(two, "--storm"), want: stormDrain},
		{args: append(two, "--storm=drain"), want: stormDrain},
		{args: append(two, "--storm=kill"), want: stormKill},
		{args: append(two, "--storm=restart"), want: stormRestart},
		{args: append(two, "--storm=false"), want: stormOff},
		{args: []string{"--spawn-servers", "1", "--storm=restart"}, want: stormRestart},
		{args: []string{"--addrs", "a:1,b:1", "--admin-addrs", "a:2,b:2", "--storm"}, want: stormDrain},
		{args: append(two, "--storm=boom"), err: "not drain, kill or restart"},
		{args: append(two, "--storm", "kill"), err: `unexpected argument "kill"`},
		{args: []string{"--addrs", "a:1,b:1", "--admin-addrs", "a:2,b:2", "--storm=kill"}, err: "needs --spawn-servers"},
		{args: []string{"--addrs", "a:1,b:1", "--admin-addrs", "a:2,b:2", "--storm=restart"}, err: "needs --spawn-servers"},
		{args: []string{"--spawn-servers", "1", "--storm=kill"}, err: "at least two servers"},
		{args: []string{"--spawn-servers", "1", "--storm"}, err: "at least two servers"},
		{args: []string{"--addrs", "a:1", "--admin-addrs", "a:2", "--storm"}, err: "at least two servers"},
		{args: append(two, "--transport", "sse", "--storm=kill"), want: stormKill},
		{args: append(two, "--transport", "grpc", "--storm=kill"), want: stormKill},
		{args: append(two, "--transport", "mqtt", "--storm=kill"), want: stormKill},
		{args: append(two, "--transport", "amqp"), err: "tcp, ws, sse, grpc or mqtt"},
	} {
		o, err := parseFlags(c.args)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one containing %q", c.args, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.args, err)
		case c.err == "" && o.storm != c.want:
			t.Errorf("%q: storm %q, want %q", c.args, o.storm, c.want)
		}
	}
	// A plain --storm takes no value: the flags after it still count.
	o, err := parseFlags(append(two, "--storm", "--duration", "9s"))
	if err != nil || o.storm != stormDrain || o.duration != 9*time.Second {
		t.Fatalf("--storm --duration 9s: %v, %+v", err, o)
	}
}

func TestAvoidListPick(t *testing.T) {
	hosts := []string{"a", "b", "c"}
	t0 := time.Now()
	pick := func(a *avoidList, pref, idx int, at time.Duration) string {
		return a.pick(hosts, pref, idx, t0.Add(at))
	}
	var a avoidList
	if got := pick(&a, 0, 0, 0); got != "a" {
		t.Fatalf("nothing avoided: %s, want the preferred a", got)
	}
	a.failed("a", t0)
	if got := []string{pick(&a, 0, 0, time.Second), pick(&a, 0, 1, time.Second), pick(&a, 1, 0, time.Second)}; got[0] != "b" || got[1] != "c" || got[2] != "b" {
		t.Fatalf("a refused: %v, want a's devices spread over [b c] and b's on b", got)
	}
	if got := pick(&a, 0, 0, avoidFor); got != "a" {
		t.Fatalf("after %s: %s, want a again", avoidFor, got)
	}
	a.failed("b", t0)
	a.failed("c", t0)
	if got := pick(&a, 2, 0, time.Second); got != "c" {
		t.Fatalf("all refused: %s, want the preferred c", got)
	}
	a.succeeded("b")
	if got := pick(&a, 0, 5, time.Second); got != "b" {
		t.Fatalf("b answered again: %s, want b", got)
	}

	var d avoidList // GOAWAY is for good
	d.goAway("a")
	if got := pick(&d, 0, 1, time.Hour); got != "c" {
		t.Fatalf("a drained an hour ago: %s, want c", got)
	}
	d.goAway("b")
	d.goAway("c")
	if got := pick(&d, 1, 0, 0); got != "b" {
		t.Fatalf("all drained: %s, want the preferred b", got)
	}
}

// A refused dial sends the device, and the next ones, to a live server.
func TestDialAvoidsRefusingServer(t *testing.T) {
	live, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	w := newWorker(WorkerSpec{Addrs: []string{deadAddr, live.Addr().String()}})
	d := &benchDevice{w: w, pref: 0}
	if _, err := d.dial(context.Background(), "tcp", ""); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	for i := 0; i < 2; i++ {
		nc, err := (&benchDevice{w: w, pref: 0, idx: i}).dial(context.Background(), "tcp", "")
		if err != nil {
			t.Fatalf("dial %d after the refusal: %v", i, err)
		}
		nc.Close()
	}
}

// Any lost connection starts an outage that ends at the next WELCOME;
// failed reconnects in between do not restart it.
func TestOutageTracking(t *testing.T) {
	w := newWorker(WorkerSpec{Addrs: []string{"a:1", "b:1"}})
	d := &benchDevice{w: w, host: "a:1"}
	t0 := time.Now()
	for _, ev := range []client.Event{
		{Type: client.EventConnected, At: t0},
		{Type: client.EventDisconnected, At: t0.Add(time.Second), Reason: client.ReasonConnLost},
		{Type: client.EventDisconnected, At: t0.Add(2 * time.Second), Reason: client.ReasonDialFailed},
	} {
		d.onEvent(ev)
	}
	if w.affected.Load() != 1 || w.outages.Load() != 1 || w.pendingResume.Load() != 1 || w.resumed.Load() != 0 {
		t.Fatalf("down: affected %d outages %d pending %d resumed %d", w.affected.Load(), w.outages.Load(), w.pendingResume.Load(), w.resumed.Load())
	}
	back := t0.Add(3500 * time.Millisecond)
	d.dialedAt = t0.Add(3 * time.Second)
	d.onEvent(client.Event{Type: client.EventConnected, At: back})
	if w.resumed.Load() != 1 || w.pendingResume.Load() != 0 || w.lastResume.Load() != back.UnixNano() {
		t.Fatalf("back: resumed %d pending %d", w.resumed.Load(), w.pendingResume.Load())
	}
	if got := w.resLat.Quantile(1); got < 2400*time.Millisecond || got > 2600*time.Millisecond {
		t.Fatalf("resume latency %s, want 2.5s (from the lost connection)", got)
	}
	if got := w.helloLat.Quantile(1); got < 450*time.Millisecond || got > 550*time.Millisecond {
		t.Fatalf("HELLO latency %s, want 0.5s (from the successful dial)", got)
	}
	d.onEvent(client.Event{Type: client.EventDisconnected, At: back, Reason: client.ReasonGoAway})
	d.onEvent(client.Event{Type: client.EventConnected, At: back.Add(time.Second)})
	if w.affected.Load() != 1 || w.outages.Load() != 2 || w.resumed.Load() != 2 {
		t.Fatalf("second outage: affected %d outages %d resumed %d", w.affected.Load(), w.outages.Load(), w.resumed.Load())
	}
	if got := w.servers.pick(w.hosts, 0, 1, time.Now().Add(time.Hour)); got != "b:1" {
		t.Fatalf("after GOAWAY from a:1: picked %s", got)
	}

	// A connection reset before WELCOME avoids the server for a while.
	w2 := newWorker(WorkerSpec{Addrs: []string{"a:1", "b:1"}})
	d2 := &benchDevice{w: w2, host: "a:1"}
	d2.onEvent(client.Event{Type: client.EventDisconnected, At: t0, Reason: client.ReasonHandshake})
	if got := w2.servers.pick(w2.hosts, 0, 0, t0.Add(time.Second)); got != "b:1" {
		t.Fatalf("after a failed handshake on a:1: picked %s", got)
	}
}

// A message's answer and its delivery may come in either order; one
// delivered without an answer does not make up for one lost; one delivered
// under a second seq (stored twice) is counted.
func TestDeliveryMatching(t *testing.T) {
	w := newWorker(WorkerSpec{Addrs: []string{"a:1"}})
	d := &benchDevice{w: w}
	d.got(1, 11) // delivered before its answer
	d.accepted(1, 11)
	d.accepted(2, 12) // accepted, then delivered
	d.got(2, 12)
	d.got(3, 13)      // stored although the send failed
	d.accepted(4, 14) // never delivered
	if n := w.awaitDelivery.Load(); n != 1 {
		t.Fatalf("awaiting %d, want 1", n)
	}
	d.up.Store(true)
	d.c = client.New(client.Config{Addr: "a:1", Device: "x"})
	w.devs = []*benchDevice{d}
	r := w.result(0, 0, 0, 0)
	if r.Posted != 3 || r.LostDownstream != 1 || r.DeliveredUnaccepted != 1 || r.Undelivered != 0 || r.DeliveredTwice != 0 {
		t.Fatalf("posted %d lost %d delivered unaccepted %d undelivered %d twice %d", r.Posted, r.LostDownstream, r.DeliveredUnaccepted, r.Undelivered, r.DeliveredTwice)
	}
	// Stored twice: once before its answer, once after; and an unanswered
	// send delivered under two seqs.
	d.got(5, 15)
	d.accepted(5, 16)
	d.accepted(6, 17)
	d.got(6, 18)
	d.got(7, 19)
	d.got(7, 20)
	if r := w.result(0, 0, 0, 0); r.DeliveredTwice != 3 {
		t.Fatalf("delivered twice %d, want 3", r.DeliveredTwice)
	}
}

// Source addresses 127.0.0.x only reach servers on loopback.
func TestSourceIPs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"--spawn-servers", "1", "--connections", "45000"}, 3},
		{[]string{"--addrs", "127.0.0.1:7000", "--admin-addrs", "127.0.0.1:9090"}, 1},
		{[]string{"--addrs", "localhost:7000", "--admin-addrs", "localhost:9090"}, 1},
		{[]string{"--transport", "ws", "--addrs", "127.0.0.1:8080", "--admin-addrs", "127.0.0.1:9090"}, 1},
		{[]string{"--transport", "sse", "--addrs", "127.0.0.1:8080", "--admin-addrs", "127.0.0.1:9090"}, 1},
		{[]string{"--transport", "grpc", "--addrs", "127.0.0.1:8081", "--admin-addrs", "127.0.0.1:9090"}, 1},
		{[]string{"--addrs", "10.0.0.5:7000,127.0.0.1:7000", "--admin-addrs", "10.0.0.5:9090,127.0.0.1:9090"}, 0},
		{[]string{"--addrs", "10.0.0.5:7000", "--admin-addrs", "10.0.0.5:9090", "--source-ips", "2"}, 2},
	} {
		o, err := parseFlags(c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
		} else if o.sourceIPs != c.want {
			t.Errorf("%q: %d source addresses, want %d", c.args, o.sourceIPs, c.want)
		}
	}
}

// A scenario sets its flags; flags on the command line win over it.
func TestScenario(t *testing.T) {
	o, err := parseFlags([]string{"--spawn-servers", "1", "--scenario", "uniform-deliver", "--deliver-rate", "20000"})
	if err != nil {
		t.Fatal(err)
	}
	if o.transport != "ws" || o.connections != 2000 || o.publishRate != 0 || o.postBatch != 100 ||
		o.postConcurrency != 8 || o.deliverRate != 20000 {
		t.Fatalf("uniform-deliver with --deliver-rate 20000: %+v", o)
	}
	o, err = parseFlags([]string{"--spawn-servers", "1", "--scenario", "uniform-publish"})
	if err != nil || o.deliverRate != 0 || o.publishRate != 10000 || o.burst != 1 {
		t.Fatalf("uniform-publish: %v, %+v", err, o)
	}
	if _, err := parseFlags([]string{"--spawn-servers", "1", "--scenario", "nope"}); err == nil ||
		!strings.Contains(err.Error(), "uniform-deliver") {
		t.Fatalf("unknown scenario: %v, want an error naming the scenarios", err)
	}
}
