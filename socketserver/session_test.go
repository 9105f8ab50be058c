package socketserver_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Both stores: the embedded one must mean what Redis means.
func forEachStore(t *testing.T, f func(t *testing.T, newStore func() store.Store)) {
	t.Run("memory", func(t *testing.T) {
		st := store.NewMemory()
		f(t, func() store.Store { return st })
	})
	t.Run("redis", func(t *testing.T) {
		r := redistest.Start(t)
		f(t, func() store.Store { return redisStore(t, r) })
	})
}

func TestDeliveryAckAndRedelivery(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func() store.Store) {
		srv := startServer(t, newStore(), "pod-a", nil)
		// Messages for a device that never connected wait for its first
		// HELLO. A new outbox starts from the clock, then seqs go up by one.
		base := send(t, srv, "d", "m1") - 1
		for i := 2; i <= 3; i++ {
			if seq := send(t, srv, "d", fmt.Sprintf("m%d", i)); seq != base+uint64(i) {
				t.Fatalf("seq %d, want %d", seq-base, i)
			}
		}
		c := dial(t, srv.Addrs().TCP)
		c.welcome("d", 0)
		for i := 1; i <= 3; i++ {
			if seq, p := c.deliver(); seq != base+uint64(i) || p != fmt.Sprintf("m%d", i) {
				t.Fatalf("DELIVER %d %q", seq-base, p)
			}
		}
		// Live messages follow in order.
		send(t, srv, "d", "m4")
		if seq, p := c.deliver(); seq != base+4 || p != "m4" {
			t.Fatalf("live DELIVER %d %q", seq-base, p)
		}
		c.ack(0) // nothing processed yet is a valid ACK
		c.ack(base + 2)
		eventually(t, "ack 2 stored", func() bool { return deviceInfo(t, srv, "d").AckedSeq == base+2 })
		if d := deviceInfo(t, srv, "d"); !d.Connected || d.Server != "pod-a" || d.LastSeq != base+4 || d.Pending != 2 {
			t.Fatalf("device %+v", d)
		}
		c.nc.Close()
		eventually(t, "disconnect seen", func() bool { return !deviceInfo(t, srv, "d").Connected })
		// Unacked 3 and 4 come back; last_seq 3 counts as an ack of 3.
		c2 := dial(t, srv.Addrs().TCP)
		c2.welcome("d", base+3)
		if seq, _ := c2.deliver(); seq != base+4 {
			t.Fatalf("re-delivery started at %d, want 4", seq-base)
		}
		c2.ack(base + 4)
		eventually(t, "all acked", func() bool { return deviceInfo(t, srv, "d").Pending == 0 })
	})
}

func TestPublishStoredOnceAndAcked(t *testing.T) {
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", nil)
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	for _, id := range []uint64{1, 2, 2, 1, 7} {
		c.publish(id, fmt.Sprintf("p%d", id))
		f := c.expect(protocol.TypePubAck)
		if got := binary.BigEndian.Uint64(f.body); got != id {
			t.Fatalf("PUBACK %d for PUBLISH %d", got, id)
		}
	}
	c.nc.Close()
	// A retransmit after reconnecting is acknowledged, not appended again.
	c2 := dial(t, srv.Addrs().TCP)
	if w := c2.welcome("d", 0); w.LastPublishID != 7 {
		t.Fatalf("last_publish_id %d, want 7", w.LastPublishID)
	}
	c2.publish(7, "p7")
	c2.expect(protocol.TypePubAck)
	entries := r.Client().XRange(context.Background(), "t:upstream", "-", "+").Val()
	var got []string
	for _, e := range entries {
		got = append(got, fmt.Sprintf("%v/%v/%v", e.Values["device"], e.Values["id"], e.Values["payload"]))
	}
	if strings.Join(got, " ") != "d/1/p1 d/2/p2 d/7/p7" {
		t.Fatalf("upstream stream: %v", got)
	}
}

// A device moves between servers sharing one Redis: no message lost, and
// only unacknowledged ones seen twice.
func TestResumeOnAnotherServer(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		r := redistest.Start(t)
		testResumeOnAnotherServer(t, func() store.Store { return redisStore(t, r) })
	})
	t.Run("redis-cluster", func(t *testing.T) {
		c := redistest.StartCluster(t)
		testResumeOnAnotherServer(t, func() store.Store { return store.NewRedis(c.Client(), "t") })
	})
}

func testResumeOnAnotherServer(t *testing.T, newStore func() store.Store) {
	a := startServer(t, newStore(), "pod-a", nil)
	b := startServer(t, newStore(), "pod-b", nil)
	c := dial(t, a.Addrs().TCP)
	c.welcome("d", 0)
	base := send(t, b, "d", "1") - 1 // sent through the other pod, delivered live
	send(t, a, "d", "2")
	for i := uint64(1); i <= 2; i++ {
		if seq, _ := c.deliver(); seq != base+i {
			t.Fatalf("live seq %d, want %d", seq-base, i)
		}
	}
	c.ack(base + 1)
	eventually(t, "ack", func() bool { return deviceInfo(t, a, "d").AckedSeq == base+1 })
	c.nc.Close()
	eventually(t, "disconnect seen", func() bool { return !deviceInfo(t, a, "d").Connected })
	send(t, a, "d", "3") // while away
	c2 := dial(t, b.Addrs().TCP)
	w := c2.welcome("d", base+1)
	if !w.Resumed || w.Server != "pod-b" {
		t.Fatalf("WELCOME %+v", w)
	}
	for i := uint64(2); i <= 3; i++ {
		if seq, p := c2.deliver(); seq != base+i || p != fmt.Sprint(i) {
			t.Fatalf("after resume: seq %d %q, want %d", seq-base, p, i)
		}
	}
	send(t, a, "d", "4")
	if seq, _ := c2.deliver(); seq != base+4 {
		t.Fatalf("live after resume: %d", seq-base)
	}
	if d := deviceInfo(t, a, "d"); d.Server != "pod-b" {
		t.Fatalf("device held by %q", d.Server)
	}
}

func TestTakeover(t *testing.T) {
	t.Run("same server", func(t *testing.T) {
		srv := startServer(t, store.NewMemory(), "pod-a", nil)
		old := dial(t, srv.Addrs().TCP)
		old.welcome("d", 0)
		dial(t, srv.Addrs().TCP).welcome("d", 0)
		old.expectError(protocol.CodeSessionTakenOver)
	})
	t.Run("across servers", func(t *testing.T) {
		r := redistest.Start(t)
		a := startServer(t, redisStore(t, r), "pod-a", nil)
		b := startServer(t, redisStore(t, r), "pod-b", nil)
		old := dial(t, a.Addrs().TCP)
		old.welcome("d", 0)
		nw := dial(t, b.Addrs().TCP)
		nw.welcome("d", 0)
		old.expectError(protocol.CodeSessionTakenOver)
		// Frames of the old connection are not applied: its PUBLISH is not
		// recorded, its ACK does not count.
		seq := send(t, b, "d", "x")
		nw.deliver()
		if d := deviceInfo(t, a, "d"); d.Server != "pod-b" || d.AckedSeq != seq-1 {
			t.Fatalf("device %+v", d)
		}
	})
	t.Run("stale frames fenced even without the notice", func(t *testing.T) {
		r := redistest.Start(t)
		st := redisStore(t, r)
		a := startServer(t, st, "pod-a", nil)
		old := dial(t, a.Addrs().TCP)
		w := old.welcome("d", 0)
		// Another server accepts a HELLO; its notice goes to a server that
		// does not listen, as if it were lost.
		if _, err := st.Hello(context.Background(), "d", store.Holder{Server: "pod-x"}, 0); err != nil {
			t.Fatal(err)
		}
		old.publish(1, "late")
		old.expectError(protocol.CodeSessionTakenOver)
		if n := r.Client().XLen(context.Background(), "t:upstream").Val(); n != 0 {
			t.Fatalf("fenced PUBLISH appended %d entries (epoch %d)", n, w.SessionEpoch)
		}
	})
}

// A device that stops reading cannot make the server buffer without bound:
// it is cut off, and every message stays in the store for its return.
func TestSlowConsumer(t *testing.T) {
	st := store.NewMemory()
	srv := startServer(t, st, "pod-a", func(c *socketserver.Config) {
		c.WriteTimeout = 300 * time.Millisecond
	})
	// The device returns to a server with the usual write timeout: 18 MB
	// read by a test on a busy machine may stall longer than 300ms.
	back := startServer(t, st, "pod-b", nil)
	c := dial(t, srv.Addrs().TCP)
	_ = c.nc.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4096)
	c.welcome("slow", 0)
	payload := strings.Repeat("x", 60000)
	var base uint64
	for i := 0; i < 300; i++ { // 18 MB, far beyond socket buffers and the write budget
		if seq := send(t, srv, "slow", payload); i == 0 {
			base = seq - 1
		}
	}
	eventually(t, "slow device disconnected", func() bool { return srv.Connections() == 0 })
	if d := deviceInfo(t, srv, "slow"); d.Pending != 300 || d.Connected {
		t.Fatalf("device %+v", d)
	}
	// On its return it gets everything, in order.
	c2 := dial(t, back.Addrs().TCP)
	c2.welcome("slow", 0)
	for i := uint64(1); i <= 300; i++ {
		seq, p := c2.deliver()
		if seq != base+i || len(p) != len(payload) {
			t.Fatalf("seq %d (len %d), want %d", seq-base, len(p), i)
		}
		if i%50 == 0 {
			c2.ack(base + i)
		}
	}
}

// Deliveries beyond what the socket takes (the device reads nothing until
// every POST is answered, and 9 MB exceed the socket buffers): the
// writer's writes stop short and wait, the rest stays in the store for the
// pump, and the device then gets every byte, in order.
func TestDeliveriesBeyondTheSocketBuffers(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxFrameBytes = 1 << 20 })
	c := dial(t, srv.Addrs().TCP)
	c.welcome("big", 0)
	const n, size = 10, 900 << 10
	var base uint64
	for i := range n {
		if seq := send(t, srv, "big", strings.Repeat(string(rune('a'+i)), size)); i == 0 {
			base = seq - 1
		}
	}
	for i := range n {
		seq, p := c.deliver()
		if want := strings.Repeat(string(rune('a'+i)), size); seq != base+uint64(i)+1 || p != want {
			t.Fatalf("delivery %d: seq %d, %d bytes starting %q", i, seq-base, len(p), p[:min(len(p), 8)])
		}
		c.ack(seq)
	}
}

func TestAdminAPI(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.MaxFrameBytes = 100
		c.MaxPending = 2
	})
	if code, _ := api(t, srv, "GET", "/v1/devices/nobody", ""); code != 404 {
		t.Fatalf("unknown device: %d", code)
	}
	if code, _ := api(t, srv, "POST", "/v1/devices/d/messages", strings.Repeat("x", 92)); code != 413 {
		t.Fatalf("9+92 > 100: %d", code)
	}
	first := send(t, srv, "d", strings.Repeat("x", 91)) // 9+91 = 100 fits
	last := send(t, srv, "d", "2")
	if code, body := api(t, srv, "POST", "/v1/devices/d/messages", "3"); code != 429 || !strings.Contains(body, `"outbox_full"`) {
		t.Fatalf("full outbox: %d %s", code, body)
	}
	if code, _ := api(t, srv, "PUT", "/v1/devices/d/state", `[1,2]`); code != 400 {
		t.Fatalf("non-object state: %d", code)
	}
	if code, _ := api(t, srv, "PUT", "/v1/devices/d/state", `{"a":1}`); code != 204 {
		t.Fatalf("state: %d", code)
	}
	d := deviceInfo(t, srv, "d")
	if last != first+1 || d.LastSeq != last || d.Pending != 2 || string(d.State) != `{"a":1}` || d.Connected {
		t.Fatalf("device %+v", d)
	}
	if code, _ := api(t, srv, "POST", "/v1/devices/bad%20name/messages", "x"); code != 400 {
		t.Fatalf("bad device name: %d", code)
	}
	if code, body := api(t, srv, "GET", "/metrics", ""); code != 200 || !strings.Contains(body, "socketserver_connections") {
		t.Fatalf("metrics: %d", code)
	}
}

func TestAPIToken(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.APIToken = "s3cret" })
	for _, c := range [][2]string{{"POST", "/v1/devices/d/messages"}, {"POST", "/v1/messages"}, {"GET", "/v1/devices/d"},
		{"PUT", "/v1/devices/d/state"}, {"GET", "/v1/upstream"}, {"POST", "/v1/upstream/ack"}, {"POST", "/drain"}, {"GET", "/debug/pprof/"}} {
		if code, _ := api(t, srv, c[0], c[1], "x"); code != 401 {
			t.Fatalf("%s %s without token: %d", c[0], c[1], code)
		}
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := api(t, srv, "GET", p, ""); code != 200 {
			t.Fatalf("%s must stay open: %d", p, code)
		}
	}
	if _, err := adminClient(srv, "wrong").Send(context.Background(), "d", []byte("x"), ""); !adminapi.IsRefused(err) {
		t.Fatalf("with a wrong token: %v", err)
	}
	if _, err := adminClient(srv, "s3cret").Send(context.Background(), "d", []byte("x"), ""); err != nil {
		t.Fatalf("with token: %v", err)
	}
	// Without a token the server does not start, unless told to leave the API open.
	_, err := socketserver.New(socketserver.Config{ServerName: "x", InsecureNoAuth: true}, store.NewMemory(), logr.Discard())
	if err == nil || !strings.Contains(err.Error(), "--api-token-file") || !strings.Contains(err.Error(), "--insecure-no-api-auth") {
		t.Fatalf("New without an API token: %v", err)
	}
	open := startServer(t, store.NewMemory(), "pod-b", func(c *socketserver.Config) { c.InsecureNoAPIAuth = true })
	if code, body := api(t, open, "GET", "/v1/devices/nobody", ""); code != 404 {
		t.Fatalf("open API: %d %s", code, body)
	}
}
