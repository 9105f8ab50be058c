package socketserver_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestHelloWelcome(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	api(t, srv, "PUT", "/v1/devices/store-1004/state", `{"till":4}`)
	c := dial(t, srv.Addrs().TCP)
	c.send(protocol.TypePing, []byte("before-hello")) // allowed before HELLO
	if f := c.expect(protocol.TypePong); string(f.body) != "before-hello" {
		t.Fatalf("PONG echoed %q", f.body)
	}
	w := c.welcome("store-1004", 0)
	if w.Server != "pod-a" || w.SessionEpoch == 0 || w.Resumed || w.HeartbeatMs != 15000 || string(w.State) != `{"till":4}` {
		t.Fatalf("WELCOME %+v", w)
	}
	c.nc.Close()
	c2 := dial(t, srv.Addrs().TCP)
	if w2 := c2.welcome("store-1004", 0); !w2.Resumed || w2.SessionEpoch <= w.SessionEpoch {
		t.Fatalf("second WELCOME %+v", w2)
	}
}

func TestProtocolErrors(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxFrameBytes = 1024 })
	hello := func(device, tok string, proto int) []byte {
		return protocol.MustJSON(map[string]any{"protocol": proto, "device": device, "token": tok})
	}
	cases := []struct {
		name string
		raw  []byte
		code protocol.Code
	}{
		{"oversized length", binary.BigEndian.AppendUint32(nil, 1<<31), protocol.CodeFrameTooLarge},
		{"one over the limit", binary.BigEndian.AppendUint32(nil, 1025), protocol.CodeFrameTooLarge},
		{"zero length", []byte{0, 0, 0, 0}, protocol.CodeBadFrame},
		{"unknown type before hello", []byte{0, 0, 0, 1, 0x7f}, protocol.CodeBadFrame},
		{"ack before hello", protocol.AppendFrame(nil, protocol.TypeAck, make([]byte, 8)), protocol.CodeHelloRequired},
		{"publish before hello", protocol.AppendFrame(nil, protocol.TypePublish, make([]byte, 9)), protocol.CodeHelloRequired},
		{"hello not json", protocol.AppendFrame(nil, protocol.TypeHello, []byte("{")), protocol.CodeBadFrame},
		{"protocol 2", protocol.AppendFrame(nil, protocol.TypeHello, hello("d", token("d", time.Hour), 2)), protocol.CodeUnsupportedProtocol},
		{"bad device", protocol.AppendFrame(nil, protocol.TypeHello, hello("a/b", token("a/b", time.Hour), 1)), protocol.CodeBadFrame},
		{"wrong subject", protocol.AppendFrame(nil, protocol.TypeHello, hello("d", token("other", time.Hour), 1)), protocol.CodeUnauthorized},
		{"expired token", protocol.AppendFrame(nil, protocol.TypeHello, hello("d", token("d", -time.Minute), 1)), protocol.CodeUnauthorized},
		{"garbage token", protocol.AppendFrame(nil, protocol.TypeHello, hello("d", "x.y.z", 1)), protocol.CodeUnauthorized},
		{"ping too long", protocol.AppendFrame(nil, protocol.TypePing, make([]byte, 65)), protocol.CodeBadFrame},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.Addrs().TCP)
			c.sendRaw(tc.raw)
			c.expectError(tc.code)
		})
	}
	t.Run("token without exp is refused", func(t *testing.T) {
		c := dial(t, srv.Addrs().TCP)
		c.send(protocol.TypeHello, hello("d", token("d", 0), 1))
		c.expectError(protocol.CodeUnauthorized)
	})
	t.Run("after hello", func(t *testing.T) {
		for name, f := range map[string][]byte{
			"second hello":   protocol.AppendFrame(nil, protocol.TypeHello, hello("d", token("d", time.Hour), 1)),
			"deliver upward": protocol.AppendFrame(nil, protocol.TypeDeliver, make([]byte, 8)),
			"short ack":      protocol.AppendFrame(nil, protocol.TypeAck, make([]byte, 7)),
			"short publish":  protocol.AppendFrame(nil, protocol.TypePublish, make([]byte, 7)),
		} {
			t.Run(name, func(t *testing.T) {
				c := dial(t, srv.Addrs().TCP)
				c.welcome("d", 0)
				c.sendRaw(f)
				c.expectError(protocol.CodeBadFrame)
			})
		}
	})
}

func TestTimeouts(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.HelloTimeout = 300 * time.Millisecond
		c.HeartbeatInterval = 200 * time.Millisecond
		c.HeartbeatTimeout = 400 * time.Millisecond
	})
	t.Run("hello timeout is not extended by pings", func(t *testing.T) {
		c := dial(t, srv.Addrs().TCP)
		for i := 0; i < 3; i++ {
			c.send(protocol.TypePing, nil)
			c.expect(protocol.TypePong)
			time.Sleep(120 * time.Millisecond)
		}
		c.expectError(protocol.CodeHelloTimeout)
	})
	t.Run("heartbeat keeps a session alive, silence ends it", func(t *testing.T) {
		c := dial(t, srv.Addrs().TCP)
		c.welcome("hb", 0)
		for i := 0; i < 5; i++ { // 1 s of pings, longer than the timeout
			time.Sleep(200 * time.Millisecond)
			c.send(protocol.TypePing, nil)
			c.expect(protocol.TypePong)
		}
		c.expectError(protocol.CodeHeartbeatTimeout)
		eventually(t, "session released after heartbeat timeout", func() bool {
			return !deviceInfo(t, srv, "hb").Connected
		})
	})
}

func TestServerFull(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxConnections = 2 })
	a, b := dial(t, srv.Addrs().TCP), dial(t, srv.Addrs().TCP)
	a.welcome("a", 0)
	b.welcome("b", 0)
	c := dial(t, srv.Addrs().TCP)
	if e := c.expectError(protocol.CodeServerFull); e.RetryAfterMs <= 0 {
		t.Fatalf("server_full without retry_after_ms: %+v", e)
	}
	a.nc.Close()
	eventually(t, "a slot to free up", func() bool { return srv.Connections() < 2 })
	dial(t, srv.Addrs().TCP).welcome("c", 0)
}
