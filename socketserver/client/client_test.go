package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestDeliveryInOrderAndAcked(t *testing.T) {
	for _, transport := range []string{"tcp", "ws", "sse", "grpc", "mqtt"} {
		t.Run(transport, func(t *testing.T) {
			s := startServer(t, "server-a", store.NewMemory(), nil)
			addr := s.Addrs().TCP
			switch transport {
			case "ws":
				addr = "ws://" + s.Addrs().WS + "/ws"
			case "sse":
				addr = sseAddr(s.Addrs().WS)
			case "grpc":
				addr = "grpc://" + s.Addrs().GRPC
			case "mqtt":
				addr = "mqtt://" + s.Addrs().MQTT
			}
			// Half the messages wait in the outbox, half arrive live.
			for i := 1; i <= 50; i++ {
				post(t, s, "kiosk-1", fmt.Sprintf("m%d", i))
			}
			d := runDevice(t, client.Config{Addr: addr, Device: "kiosk-1"})
			w := d.waitConnected(t, 1).Welcome
			if w.Server != "server-a" || w.Resumed || w.SessionEpoch == 0 {
				t.Fatalf("unexpected WELCOME %+v", w)
			}
			for i := 51; i <= 100; i++ {
				post(t, s, "kiosk-1", fmt.Sprintf("m%d", i))
			}
			assertInOrder(t, d, 100)
			eventually(t, "pending 0", func() bool {
				info := getDevice(t, s, "kiosk-1")
				return info.Pending == 0 && info.AckedSeq == d.Stats().LastSeq
			})
			if st := d.Stats(); st.Delivered != 100 || st.Duplicates != 0 {
				t.Fatalf("stats %+v", st)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			id, err := d.Publish(ctx, []byte("hello upstream"))
			if err != nil || id != 1 {
				t.Fatalf("Publish = %d, %v; want id 1", id, err)
			}
		})
	}
}

// The network to the first server goes away while messages keep coming
// through the other; the device resumes there with last_seq and gets each
// message once, also those sent afterwards through the first server.
func TestResumeOnAnotherServer(t *testing.T) {
	for _, transport := range []string{"tcp", "sse", "grpc", "mqtt"} {
		t.Run(transport, func(t *testing.T) {
			_, a, b := redisPair(t, nil)
			listener := func(s *socketserver.Server) string { return s.Addrs().TCP }
			addr := func(hostPort string) string { return hostPort }
			switch transport {
			case "sse":
				listener = func(s *socketserver.Server) string { return s.Addrs().WS }
				addr = sseAddr
			case "grpc":
				listener = func(s *socketserver.Server) string { return s.Addrs().GRPC }
				addr = func(hostPort string) string { return "grpc://" + hostPort }
			case "mqtt":
				listener = func(s *socketserver.Server) string { return s.Addrs().MQTT }
				addr = func(hostPort string) string { return "mqtt://" + hostPort }
			}
			device := "pos-7-" + transport
			p := newProxy(t, listener(a))
			d := runDevice(t, client.Config{Addr: addr(p.addr()), Device: device})
			if w := d.waitConnected(t, 1).Welcome; w.Server != "server-a" {
				t.Fatalf("first connection went to %q", w.Server)
			}
			for i := 1; i <= 10; i++ {
				post(t, a, device, fmt.Sprintf("m%d", i))
			}
			assertInOrder(t, d, 10)

			p.setTarget("")
			p.cut()
			eventually(t, "disconnect", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
			for i := 11; i <= 30; i++ {
				post(t, b, device, fmt.Sprintf("m%d", i))
			}
			p.setTarget(listener(b))
			w := d.waitConnected(t, 2).Welcome
			if w.Server != "server-b" || !w.Resumed {
				t.Fatalf("second WELCOME %+v, want resumed on server-b", w)
			}
			for i := 31; i <= 40; i++ {
				post(t, a, device, fmt.Sprintf("m%d", i))
			}
			assertInOrder(t, d, 40)
			eventually(t, "pending 0", func() bool { return getDevice(t, b, device).Pending == 0 })
			if st := d.Stats(); st.Reconnects != 1 || st.Resumes != 1 || st.Delivered != 40 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestGoAwayMovesToOtherServer(t *testing.T) {
	const jitter = 300 * time.Millisecond
	_, a, b := redisPair(t, func(c *socketserver.Config) { c.DrainJitter = jitter; c.DrainTimeout = time.Minute })
	// Like a Service that stops routing to an unready pod.
	var mu sync.Mutex
	var lastDial time.Time
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		mu.Lock()
		lastDial = time.Now()
		mu.Unlock()
		target := a
		if a.Draining() {
			target = b
		}
		var nd net.Dialer
		return nd.DialContext(ctx, network, target.Addrs().TCP)
	}
	d := runDevice(t, client.Config{Addr: "socketcluster:7000", Device: "pos-8", Dial: dial})
	d.waitConnected(t, 1)
	post(t, a, "pos-8", "m1")
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
	mu.Lock()
	defer mu.Unlock()
	if lastDial.Before(ev.At.Add(ev.Wait)) {
		t.Fatalf("reconnected %s after GOAWAY, before the hinted %s", lastDial.Sub(ev.At), ev.Wait)
	}
	post(t, b, "pos-8", "m2")
	assertInOrder(t, d, 2)
}

func TestPublishRetransmitIsDeduplicated(t *testing.T) {
	r, a, _ := redisPair(t, nil)
	rdb := r.Client()
	p := newProxy(t, a.Addrs().TCP)
	var mu sync.Mutex
	var acked []string
	d := runDevice(t, client.Config{Addr: p.addr(), Device: "pos-9", OnPubAck: func(id uint64, payload []byte) {
		mu.Lock()
		acked = append(acked, fmt.Sprintf("%d=%s", id, payload))
		mu.Unlock()
	}})
	d.waitConnected(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if id, err := d.Publish(ctx, []byte("first")); err != nil || id != 1 {
		t.Fatalf("Publish = %d, %v", id, err)
	}

	// The server stores the next one but its PUBACK is lost.
	p.mute.Store(true)
	pend, err := d.PublishAsync(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "second message stored", func() bool { return rdb.XLen(ctx, "t:upstream").Val() == 2 })
	p.cutAndHeal()
	select {
	case <-pend.Done():
	case <-ctx.Done():
		t.Fatal("no PUBACK after reconnecting")
	}
	if id3, err := d.Publish(ctx, []byte("third")); err != nil || id3 != 3 {
		t.Fatalf("Publish = %d, %v", id3, err)
	}

	if got, want := upstream(t, ctx, rdb), "[1=first 2=second 3=third]"; got != want {
		t.Fatalf("upstream stream %v, want %s", got, want)
	}
	if st := d.Stats(); st.Retransmits == 0 || st.PublishesAcked != 3 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := fmt.Sprint(acked); got != "[1=first 2=second 3=third]" {
		t.Fatalf("OnPubAck saw %s, want each message once", got)
	}
}

func TestPublishIDsContinueAcrossProcesses(t *testing.T) {
	s := startServer(t, "server-a", store.NewMemory(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first := runDevice(t, client.Config{Addr: s.Addrs().TCP, Device: "pos-10"})
	for range 3 {
		if _, err := first.Publish(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	// A restarted device (a new process) must not reuse ids 1..3.
	second := runDevice(t, client.Config{Addr: s.Addrs().TCP, Device: "pos-10"})
	id, err := second.Publish(ctx, []byte("y"))
	if err != nil || id != 4 {
		t.Fatalf("Publish after restart = %d, %v; want 4", id, err)
	}
}

func TestTakeoverStopsTheOldClient(t *testing.T) {
	_, a, b := redisPair(t, nil)
	old := runDevice(t, client.Config{Addr: a.Addrs().TCP, Device: "pos-11"})
	old.waitConnected(t, 1)
	winner := runDevice(t, client.Config{Addr: "ws://" + b.Addrs().WS + "/ws", Device: "pos-11"})
	winner.waitConnected(t, 1)

	select {
	case err := <-old.runErr:
		var se *client.ServerError
		if !errors.Is(err, client.ErrTakenOver) || !errors.As(err, &se) || se.Code != protocol.CodeSessionTakenOver {
			t.Fatalf("Run returned %v, want ErrTakenOver", err)
		}
		old.runErr <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("the taken-over client kept running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := old.Publish(ctx, []byte("x")); !errors.Is(err, client.ErrStopped) {
		t.Fatalf("Publish on a stopped client = %v", err)
	}
	if info := getDevice(t, a, "pos-11"); info.Server != "server-b" || !info.Connected {
		t.Fatalf("device %+v, want held by server-b", info)
	}
	post(t, a, "pos-11", "m1")
	assertInOrder(t, winner, 1)
	if got := len(winner.eventsOf(client.EventDisconnected)); got != 0 {
		t.Fatalf("the winner was disconnected %d times", got)
	}
}

func TestServerSilenceIsDetected(t *testing.T) {
	s := startServer(t, "server-a", store.NewMemory(), func(c *socketserver.Config) {
		c.HeartbeatInterval = 200 * time.Millisecond
		c.HeartbeatTimeout = time.Minute // the server never gives up first
	})
	p := newProxy(t, s.Addrs().TCP)
	d := runDevice(t, client.Config{Addr: p.addr(), Device: "pos-12"})
	d.waitConnected(t, 1)
	p.setTarget("")    // no new connection until the server is heard again
	p.mute.Store(true) // the server's frames, PONGs included, vanish
	eventually(t, "disconnect", func() bool { return len(d.eventsOf(client.EventDisconnected)) > 0 })
	if ev := d.eventsOf(client.EventDisconnected)[0]; ev.Reason != client.ReasonServerSilent {
		t.Fatalf("disconnect %+v, want server_silent", ev)
	}
	p.mute.Store(false)
	p.setTarget(s.Addrs().TCP)
	d.waitConnected(t, 2)
}

func TestAuthentication(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "device.key")
	if err := os.WriteFile(keyFile, []byte("s3cret-device-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := client.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "server-a", store.NewMemory(), func(c *socketserver.Config) {
		c.InsecureNoAuth = false
		c.AuthKey = []byte("s3cret-device-key-0123456789abcdef")
	})

	t.Run("signed token round trip", func(t *testing.T) {
		tok, err := client.SignToken(key, "pos-13", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithSubject("pos-13"), jwt.WithExpirationRequired()).
			Parse(tok, func(*jwt.Token) (any, error) { return []byte("s3cret-device-key-0123456789abcdef"), nil })
		if err != nil || !parsed.Valid {
			t.Fatalf("token does not verify: %v", err)
		}
		d := runDevice(t, client.Config{Addr: s.Addrs().TCP, Device: "pos-13", TokenFunc: client.KeyTokenFunc(key, "pos-13", time.Hour)})
		d.waitConnected(t, 1)
	})

	for name, tok := range map[string]func() string{
		"wrong key":    func() string { tok, _ := client.SignToken([]byte("other"), "pos-14", time.Hour); return tok },
		"other device": func() string { tok, _ := client.SignToken(key, "pos-15", time.Hour); return tok },
		"expired":      func() string { tok, _ := client.SignToken(key, "pos-14", -time.Minute); return tok },
	} {
		t.Run(name, func(t *testing.T) {
			d := runDevice(t, client.Config{Addr: s.Addrs().TCP, Device: "pos-14", Token: tok()})
			eventually(t, "two refusals", func() bool { return len(d.eventsOf(client.EventDisconnected)) >= 2 })
			ev := d.eventsOf(client.EventDisconnected)[0]
			if ev.Reason != client.ReasonServerError || ev.Code != protocol.CodeUnauthorized {
				t.Fatalf("disconnect %+v, want unauthorized", ev)
			}
			if st := d.Stats(); st.Connects != 0 || st.Errors[protocol.CodeUnauthorized] < 2 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestUnavailableStoreWaitsRetryAfter(t *testing.T) {
	r, a, _ := redisPair(t, func(c *socketserver.Config) { c.StoreTimeout = 300 * time.Millisecond })
	r.Kill()
	d := runDevice(t, client.Config{Addr: a.Addrs().TCP, Device: "pos-16"})
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
}

// The store fails for one PUBLISH and a later one follows on the same
// connection. Both must end up stored, whether the device retransmits after
// its PUBACK timeout or after a reconnect that lost every PUBACK: the later
// id must not be recorded over the failed one, or the failed one's
// retransmit would be PUBACKed as a duplicate without ever being stored.
func TestPublishAfterFailedStoreIsNotLost(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
		t.Run(map[bool]string{false: "timeout", true: "reconnect"}[reconnect], func(t *testing.T) {
			r, a, _ := redisPair(t, func(c *socketserver.Config) { c.StoreTimeout = 200 * time.Millisecond })
			rdb := r.Client()
			p := newProxy(t, a.Addrs().TCP)
			cfg := client.Config{Addr: p.addr(), Device: "pos-18"}
			if !reconnect {
				// Past the failed store (the Redis client's 2s read timeout),
				// so the second goes out before the first is retransmitted.
				cfg.PubAckTimeout = 3 * time.Second
			}
			d := runDevice(t, cfg)
			d.waitConnected(t, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			p.mute.Store(reconnect) // no PUBACK reaches the device
			// Paused writes time the first store out; the Redis client drops
			// that connection, so the paused command never runs.
			if err := rdb.Do(ctx, "CLIENT", "PAUSE", "5000", "WRITE").Err(); err != nil {
				t.Fatal(err)
			}
			first, err := d.PublishAsync(ctx, []byte("first"))
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "the server to give up storing it", func() bool { return publishes(t, a, "failed") >= 1 })
			if err := rdb.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Fatal(err)
			}
			second, err := d.PublishAsync(ctx, []byte("second"))
			if err != nil {
				t.Fatal(err)
			}
			if reconnect {
				eventually(t, "the server to handle the second", func() bool {
					return publishes(t, a, "failed") >= 2 || publishes(t, a, "stored") >= 1
				})
				p.cutAndHeal()
			}
			for _, pend := range []*client.Pending{first, second} {
				select {
				case <-pend.Done():
				case <-ctx.Done():
					t.Fatal("no PUBACK")
				}
			}
			if got, want := upstream(t, ctx, rdb), "[1=first 2=second]"; got != want {
				t.Fatalf("upstream stream %v, want %s", got, want)
			}
		})
	}
}
