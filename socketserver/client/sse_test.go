package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// sseAddr is the SSE address of a server (its WebSocket listener).
func sseAddr(hostPort string) string { return "http://" + hostPort + "/sse" }

// Payloads that are not single-line text travel as they are: line feeds
// (several data lines), carriage returns, binary and empty (deliver64).
func TestSSEPayloadsArriveIntact(t *testing.T) {
	s := startServer(t, "server-a", store.NewMemory(), nil)
	payloads := []string{"plain", "two\nlines", "\nleading and trailing\n", "cr\r\nlf", "\x00\xff\x01 binary", "", "ünïcödé", ": not a comment"}
	for _, p := range payloads {
		post(t, s, "kiosk-payloads", p)
	}
	d := runDevice(t, client.Config{Addr: sseAddr(s.Addrs().WS), Device: "kiosk-payloads"})
	eventually(t, "every payload", func() bool { seqs, _ := d.received(); return len(seqs) >= len(payloads) })
	_, msgs := d.received()
	if fmt.Sprintf("%q", msgs) != fmt.Sprintf("%q", payloads) {
		t.Fatalf("payloads\n got %q\nwant %q", msgs, payloads)
	}
}

// routeDial sends every connection (the stream's and the POSTs') to the
// first server that is usable, like a Service in front of the pods: down
// reports a server that must not get new connections.
func routeDial(servers []*socketserver.Server, down func(*socketserver.Server) bool, dials *atomic.Int64) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		if dials != nil {
			dials.Add(1)
		}
		target := servers[len(servers)-1]
		for _, s := range servers {
			if !down(s) {
				target = s
				break
			}
		}
		var nd net.Dialer
		return nd.DialContext(ctx, network, target.Addrs().WS)
	}
}

func TestSSEGoAwayMovesToOtherServer(t *testing.T) {
	const jitter = 300 * time.Millisecond
	_, a, b := redisPair(t, func(c *socketserver.Config) { c.DrainJitter = jitter; c.DrainTimeout = time.Minute })
	dial := routeDial([]*socketserver.Server{a, b}, (*socketserver.Server).Draining, nil)
	d := runDevice(t, client.Config{Addr: "http://socketcluster:8080/sse", Device: "pos-sse-8", Dial: dial})
	d.waitConnected(t, 1)
	post(t, a, "pos-sse-8", "m1")
	assertInOrder(t, d, 1)

	drained := a.Drain()
	w := d.waitConnected(t, 2).Welcome
	if w.Server != "server-b" || !w.Resumed {
		t.Fatalf("WELCOME after drain %+v", w)
	}
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not finish although the device left")
	}
	ev := d.eventsOf(client.EventDisconnected)[0]
	if ev.Reason != client.ReasonGoAway || ev.Wait > jitter {
		t.Fatalf("disconnect %+v, want goaway with a wait of at most %s", ev, jitter)
	}
	if connected := d.eventsOf(client.EventConnected)[1]; connected.At.Before(ev.At.Add(ev.Wait)) {
		t.Fatalf("reconnected %s after GOAWAY, before the hinted %s", connected.At.Sub(ev.At), ev.Wait)
	}
	post(t, b, "pos-sse-8", "m2")
	assertInOrder(t, d, 2)
	eventually(t, "pending 0", func() bool { return getDevice(t, b, "pos-sse-8").Pending == 0 })
}

// waitTakenOver waits for d's Run to return ErrTakenOver.
func waitTakenOver(t *testing.T, d *device, who string) {
	t.Helper()
	select {
	case err := <-d.runErr:
		var se *client.ServerError
		if !errors.Is(err, client.ErrTakenOver) || !errors.As(err, &se) || se.Code != protocol.CodeSessionTakenOver {
			t.Fatalf("%s: Run returned %v, want ErrTakenOver", who, err)
		}
		d.runErr <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatalf("%s kept running after it was taken over", who)
	}
}

// An SSE device is taken over by a TCP HELLO on another server, and a new
// SSE connection takes the session back from the TCP one.
func TestSSETakeoverAcrossTransports(t *testing.T) {
	_, a, b := redisPair(t, nil)
	sse := runDevice(t, client.Config{Addr: sseAddr(a.Addrs().WS), Device: "pos-sse-11"})
	sse.waitConnected(t, 1)
	post(t, a, "pos-sse-11", "m1")
	assertInOrder(t, sse, 1)
	// Acknowledged, so that the next connection does not get it again.
	eventually(t, "pending 0", func() bool { return getDevice(t, a, "pos-sse-11").Pending == 0 })

	tcp := runDevice(t, client.Config{Addr: b.Addrs().TCP, Device: "pos-sse-11"})
	tcp.waitConnected(t, 1)
	waitTakenOver(t, sse, "the SSE device")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := sse.Publish(ctx, []byte("x")); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("Publish on a stopped client = %v", err)
	}
	if info := getDevice(t, a, "pos-sse-11"); info.Server != "server-b" || !info.Connected {
		t.Fatalf("device %+v, want held by server-b", info)
	}
	post(t, a, "pos-sse-11", "m2")
	eventually(t, "m2 on TCP", func() bool { _, m := tcp.received(); return len(m) == 1 && m[0] == "m2" })

	back := runDevice(t, client.Config{Addr: sseAddr(b.Addrs().WS), Device: "pos-sse-11", LastSeq: tcp.Stats().LastSeq})
	back.waitConnected(t, 1)
	waitTakenOver(t, tcp, "the TCP device")
	post(t, b, "pos-sse-11", "m3")
	eventually(t, "m3 on SSE", func() bool { _, m := back.received(); return len(m) == 1 && m[0] == "m3" })
	if id, err := back.Publish(ctx, []byte("after takeover")); err != nil || id != 1 {
		t.Fatalf("Publish = %d, %v", id, err)
	}
	for _, d := range []*device{sse, tcp} {
		if _, m := d.received(); strings.Contains(fmt.Sprint(m), "m3") {
			t.Fatalf("a taken-over device got m3: %v", m)
		}
	}
}

// PUBLISH answers are lost and the connections cut: each message is
// retransmitted with its id and appears once in the upstream stream.
func TestSSEPublishExactlyOnce(t *testing.T) {
	r, a, b := redisPair(t, nil)
	rdb := r.Client()
	p := newProxy(t, a.Addrs().WS)
	var mu sync.Mutex
	var acked []string
	d := runDevice(t, client.Config{Addr: sseAddr(p.addr()), Device: "pos-sse-9", PubAckTimeout: time.Second,
		OnPubAck: func(id uint64, payload []byte) {
			mu.Lock()
			acked = append(acked, fmt.Sprintf("%d=%s", id, payload))
			mu.Unlock()
		}})
	d.waitConnected(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if id, err := d.Publish(ctx, []byte("first")); err != nil || id != 1 {
		t.Fatalf("Publish = %d, %v", id, err)
	}

	// The server stores the next one but its answer is lost.
	p.mute.Store(true)
	pend, err := d.PublishAsync(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "second message stored", func() bool { return rdb.XLen(ctx, "t:upstream").Val() == 2 })
	// Then the connections break, and the device comes back on the other server.
	p.setTarget(b.Addrs().WS)
	p.cutAndHeal()
	select {
	case <-pend.Done():
	case <-ctx.Done():
		t.Fatal("no answer after reconnecting")
	}
	var pends []*client.Pending
	for i := 3; i <= 20; i++ {
		pend, err := d.PublishAsync(ctx, []byte(fmt.Sprintf("m%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		pends = append(pends, pend)
		if i == 10 {
			p.cut() // in the middle of the stream of PUBLISHes
		}
	}
	for _, pend := range pends {
		select {
		case <-pend.Done():
		case <-ctx.Done():
			t.Fatalf("publish %d not acknowledged", pend.ID())
		}
	}
	want := []string{"1=first", "2=second"}
	for i := 3; i <= 20; i++ {
		want = append(want, fmt.Sprintf("%d=m%d", i, i))
	}
	if got := upstream(t, ctx, rdb); got != fmt.Sprint(want) {
		t.Fatalf("upstream stream %v, want %v", got, want)
	}
	if st := d.Stats(); st.Retransmits == 0 || st.PublishesAcked != 20 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(acked) != fmt.Sprint(want) {
		t.Fatalf("OnPubAck saw %v, want each message once", acked)
	}
}

// A server dies without a drain while messages flow both ways: the device
// resumes on the other server and nothing is lost or repeated.
func TestSSEServerKilled(t *testing.T) {
	for _, how := range []string{"shutdown", "listener closed"} {
		t.Run(how, func(t *testing.T) {
			r, a, b := redisPair(t, func(c *socketserver.Config) { c.HeartbeatInterval = 500 * time.Millisecond })
			rdb := r.Client()
			var dead atomic.Bool
			// Between the server and the device, so that "listener closed"
			// can drop every connection at once without the server knowing.
			p := newProxy(t, a.Addrs().WS)
			servers := map[*socketserver.Server]string{a: p.addr(), b: b.Addrs().WS}
			dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
				target := servers[a]
				if dead.Load() {
					target = servers[b]
				}
				var nd net.Dialer
				return nd.DialContext(ctx, network, target)
			}
			d := runDevice(t, client.Config{Addr: "http://socketcluster:8080/sse", Device: "pos-sse-kill", Dial: dial,
				PubAckTimeout: time.Second})
			d.waitConnected(t, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			// Messages both ways, before and after the failure.
			var pends []*client.Pending
			send := func(from, to int) {
				for i := from; i <= to; i++ {
					post(t, b, "pos-sse-kill", fmt.Sprintf("m%d", i))
					pend, err := d.PublishAsync(ctx, []byte(fmt.Sprintf("u%d", i)))
					if err != nil {
						t.Fatal(err)
					}
					pends = append(pends, pend)
				}
			}
			send(1, 20)
			eventually(t, "10 deliveries", func() bool { s, _ := d.received(); return len(s) >= 10 })
			dead.Store(true)
			switch how {
			case "shutdown": // in process, without a drain: every connection closed at once
				sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
				_ = a.Shutdown(sctx)
				scancel()
			case "listener closed": // the path to the server is gone: connections cut, no goodbye
				p.setTarget("")
				p.cut()
			}
			send(21, 40)
			w := d.waitConnected(t, 2).Welcome
			if w.Server != "server-b" || !w.Resumed {
				t.Fatalf("WELCOME after the failure %+v", w)
			}
			send(41, 50)
			assertInOrder(t, d, 50)
			for _, pend := range pends {
				select {
				case <-pend.Done():
				case <-ctx.Done():
					t.Fatalf("publish %d not acknowledged", pend.ID())
				}
			}
			var want []string
			for i := 1; i <= 50; i++ {
				want = append(want, fmt.Sprintf("%d=u%d", i, i))
			}
			if got := upstream(t, ctx, rdb); got != fmt.Sprint(want) {
				t.Fatalf("upstream stream %v, want %v", got, want)
			}
			eventually(t, "pending 0", func() bool { return getDevice(t, b, "pos-sse-kill").Pending == 0 })
			if st := d.Stats(); st.Delivered != 50 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestSSERefusedHello(t *testing.T) {
	t.Run("unauthorized", func(t *testing.T) {
		s := startServer(t, "server-a", store.NewMemory(), func(c *socketserver.Config) {
			c.InsecureNoAuth = false
			c.AuthKey = []byte("s3cret-device-key-0123456789abcdef")
		})
		tok, _ := client.SignToken([]byte("not-the-key-0123456789abcdef-0123"), "pos-sse-14", time.Hour)
		d := runDevice(t, client.Config{Addr: sseAddr(s.Addrs().WS), Device: "pos-sse-14", Token: tok})
		eventually(t, "two refusals", func() bool { return len(d.eventsOf(client.EventDisconnected)) >= 2 })
		ev := d.eventsOf(client.EventDisconnected)[0]
		if ev.Reason != client.ReasonServerError || ev.Code != protocol.CodeUnauthorized {
			t.Fatalf("disconnect %+v, want unauthorized", ev)
		}
		if st := d.Stats(); st.Connects != 0 || st.Errors[protocol.CodeUnauthorized] < 2 {
			t.Fatalf("stats %+v", st)
		}

		key := []byte("s3cret-device-key-0123456789abcdef")
		ok := runDevice(t, client.Config{Addr: sseAddr(s.Addrs().WS), Device: "pos-sse-15",
			TokenFunc: client.KeyTokenFunc(key, "pos-sse-15", time.Hour)})
		ok.waitConnected(t, 1)
		post(t, s, "pos-sse-15", "m1")
		assertInOrder(t, ok, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := ok.Publish(ctx, []byte("signed")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("store unavailable", func(t *testing.T) {
		r, a, _ := redisPair(t, func(c *socketserver.Config) { c.StoreTimeout = 300 * time.Millisecond })
		r.Kill()
		d := runDevice(t, client.Config{Addr: sseAddr(a.Addrs().WS), Device: "pos-sse-16"})
		eventually(t, "a refusal", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
		ev := d.eventsOf(client.EventDisconnected)[0]
		var se *client.ServerError
		if ev.Code != protocol.CodeUnavailable || !errors.As(ev.Err, &se) || se.RetryAfterMs == 0 {
			t.Fatalf("disconnect %+v, want unavailable with retry_after_ms", ev)
		}
		if ev.Wait != time.Duration(se.RetryAfterMs)*time.Millisecond {
			t.Fatalf("client waits %s, server asked for %dms", ev.Wait, se.RetryAfterMs)
		}
		r.Restart()
		if w := d.waitConnected(t, 1).Welcome; w.Server != "server-a" {
			t.Fatalf("WELCOME %+v", w)
		}
	})
}
