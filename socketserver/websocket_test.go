package socketserver_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// The WebSocket side is tested with an independent client implementation.
func wsDial(t *testing.T, srv *socketserver.Server, protocols ...string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+srv.Addrs().WS+"/ws", &websocket.DialOptions{Subprotocols: protocols})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func wsSend(t *testing.T, c *websocket.Conn, typ byte, body []byte) {
	t.Helper()
	if err := c.Write(context.Background(), websocket.MessageBinary, append([]byte{typ}, body...)); err != nil {
		t.Fatal(err)
	}
}

func wsRead(t *testing.T, c *websocket.Conn) (byte, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mt, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if mt != websocket.MessageBinary || len(b) == 0 {
		t.Fatalf("server sent message type %v of %d bytes", mt, len(b))
	}
	return b[0], b[1:]
}

func wsExpectError(t *testing.T, c *websocket.Conn, code protocol.Code) {
	t.Helper()
	typ, body := wsRead(t, c)
	var e protocol.ErrorBody
	if typ != protocol.TypeError || json.Unmarshal(body, &e) != nil || e.Code != code {
		t.Fatalf("got %s %s, want ERROR %s", protocol.TypeName(typ), body, code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.Read(ctx); err == nil {
		t.Fatal("connection still open after ERROR")
	}
}

func TestWebSocketSession(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	first := send(t, srv, "w", "first")
	c := wsDial(t, srv, "scp.v1")
	if c.Subprotocol() != "scp.v1" {
		t.Fatalf("subprotocol %q", c.Subprotocol())
	}
	wsSend(t, c, protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "w", Token: token("w", time.Hour)}))
	if typ, _ := wsRead(t, c); typ != protocol.TypeWelcome {
		t.Fatalf("got %s", protocol.TypeName(typ))
	}
	typ, body := wsRead(t, c)
	if seq, p, _ := protocol.ParseSeq(body); typ != protocol.TypeDeliver || seq != first || string(p) != "first" {
		t.Fatalf("DELIVER %d %q", seq, p)
	}
	big := strings.Repeat("b", 70000) // a 16-bit-length frame beyond 64 KiB on the wire: 64-bit length
	srvBig := startServer(t, store.NewMemory(), "pod-big", func(c *socketserver.Config) { c.MaxFrameBytes = 1 << 17 })
	send(t, srvBig, "w", big)
	cb := wsDial(t, srvBig)
	wsSend(t, cb, protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "w", Token: token("w", time.Hour)}))
	wsRead(t, cb)
	if _, body := wsRead(t, cb); len(body) != 8+len(big) {
		t.Fatalf("large DELIVER body %d bytes", len(body))
	}
	wsSend(t, c, protocol.TypeAck, binary.BigEndian.AppendUint64(nil, first))
	wsSend(t, c, protocol.TypePublish, append(binary.BigEndian.AppendUint64(nil, 9), "up"...))
	if typ, body := wsRead(t, c); typ != protocol.TypePubAck || binary.BigEndian.Uint64(body) != 9 {
		t.Fatalf("PUBACK: %s %v", protocol.TypeName(typ), body)
	}
	wsSend(t, c, protocol.TypePing, []byte("hb"))
	if typ, body := wsRead(t, c); typ != protocol.TypePong || string(body) != "hb" {
		t.Fatalf("PONG: %s %q", protocol.TypeName(typ), body)
	}
	// ACKs are written to the store in batches, a few milliseconds later.
	eventually(t, "ACK stored", func() bool { return deviceInfo(t, srv, "w").AckedSeq == first })
	if d := deviceInfo(t, srv, "w"); !d.Connected {
		t.Fatalf("device %+v", d)
	}
}

func TestWebSocketErrors(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxFrameBytes = 1024 })
	t.Run("no subprotocol offered is accepted", func(t *testing.T) {
		c := wsDial(t, srv)
		wsSend(t, c, protocol.TypePing, nil)
		if typ, _ := wsRead(t, c); typ != protocol.TypePong {
			t.Fatal(protocol.TypeName(typ))
		}
	})
	t.Run("other subprotocols only: 400", func(t *testing.T) {
		_, resp, err := websocket.Dial(context.Background(), "ws://"+srv.Addrs().WS+"/ws",
			&websocket.DialOptions{Subprotocols: []string{"mqtt", "v2.scp"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("want HTTP 400, got %v %v", resp, err)
		}
	})
	t.Run("wrong path: 404", func(t *testing.T) {
		_, resp, err := websocket.Dial(context.Background(), "ws://"+srv.Addrs().WS+"/other", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("want HTTP 404, got %v %v", resp, err)
		}
	})
	t.Run("text message", func(t *testing.T) {
		c := wsDial(t, srv, "scp.v1")
		_ = c.Write(context.Background(), websocket.MessageText, []byte(`{"protocol":1}`))
		wsExpectError(t, c, protocol.CodeBadFrame)
	})
	t.Run("too large", func(t *testing.T) {
		c := wsDial(t, srv, "scp.v1")
		_ = c.Write(context.Background(), websocket.MessageBinary, make([]byte, 1025))
		wsExpectError(t, c, protocol.CodeFrameTooLarge)
	})
	t.Run("empty message", func(t *testing.T) {
		c := wsDial(t, srv, "scp.v1")
		_ = c.Write(context.Background(), websocket.MessageBinary, nil)
		wsExpectError(t, c, protocol.CodeBadFrame)
	})
	t.Run("unknown type", func(t *testing.T) {
		c := wsDial(t, srv, "scp.v1")
		wsSend(t, c, 0x33, nil)
		wsExpectError(t, c, protocol.CodeBadFrame)
	})
	t.Run("hello required", func(t *testing.T) {
		c := wsDial(t, srv, "scp.v1")
		wsSend(t, c, protocol.TypeAck, make([]byte, 8))
		wsExpectError(t, c, protocol.CodeHelloRequired)
	})
}
