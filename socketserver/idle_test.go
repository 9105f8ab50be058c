//go:build linux

package socketserver_test

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Welcomed idle connections are parked with the poller: they hold no
// goroutine, yet every frame wakes them, one that arrives in pieces too,
// and a shutdown ends them.
func TestIdleConnectionsPark(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	base := runtime.NumGoroutine()
	const n = 200
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dial(t, srv.Addrs().TCP)
		conns[i].welcome(fmt.Sprintf("idle-%d", i), 0)
	}
	ws := wsDial(t, srv, protocol.Subprotocol)
	wsSend(t, ws, protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "idle-ws", Token: token("idle-ws", time.Hour)}))
	if typ, body := wsRead(t, ws); typ != protocol.TypeWelcome {
		t.Fatalf("got %s %s, want WELCOME", protocol.TypeName(typ), body)
	}
	sse := sseConnect(t, srv, "idle-sse", 0)
	parked := func() bool { return runtime.NumGoroutine() < base+n/10 }
	eventually(t, "idle connections hold no goroutine", parked)

	for i, c := range conns {
		c.send(protocol.TypePing, fmt.Appendf(nil, "p%d", i))
	}
	for i, c := range conns {
		if f := c.expect(protocol.TypePong); string(f.body) != fmt.Sprintf("p%d", i) {
			t.Fatalf("PONG %q to PING p%d", f.body, i)
		}
	}
	split := protocol.AppendFrame(nil, protocol.TypePing, []byte("split"))
	conns[0].sendRaw(split[:3])
	time.Sleep(50 * time.Millisecond)
	conns[0].sendRaw(split[3:])
	if f := conns[0].expect(protocol.TypePong); string(f.body) != "split" {
		t.Fatalf("PONG %q to a PING sent in pieces", f.body)
	}
	wsSend(t, ws, protocol.TypePing, []byte("ws"))
	if typ, body := wsRead(t, ws); typ != protocol.TypePong || string(body) != "ws" {
		t.Fatalf("got %s %q, want PONG ws", protocol.TypeName(typ), body)
	}
	eventually(t, "connections park again after their frames", parked)
	seq := send(t, srv, "idle-sse", "wake")
	if got, p := sse.deliver(); got != seq || p != "wake" {
		t.Fatalf("parked SSE stream: %d %q", got, p)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with parked connections: %v", err)
	}
	if _, err := conns[1].read(); err != io.EOF {
		t.Fatalf("parked connection after shutdown: %v, want EOF", err)
	}
}
