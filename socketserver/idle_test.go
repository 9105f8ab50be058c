//go:build linux

package socketserver_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/socketcluster/socketcluster/socketserver"
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
	// Streams asked for on kept-alive connections of the SSE upstream (as
	// browsers reuse them) park too.
	for i := range n / 2 {
		kept := dial(t, srv.Addrs().WS)
		kept.sendRaw([]byte("OPTIONS /sse/ack HTTP/1.1\r\nHost: x\r\n\r\n"))
		br := bufio.NewReader(kept.nc)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 204 {
			t.Fatalf("preflight: %v %v", resp, err)
		}
		device := fmt.Sprintf("idle-kept-%d", i)
		kept.sendRaw(fmt.Appendf(nil, "GET /sse?device=%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", device, token(device, time.Hour)))
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("stream on a kept-alive connection: %v %v", resp, err)
		}
	}
	// MQTT devices that subscribed (as they all do) park too: the SUBACK
	// is the transport's own answer, after which it has nothing to read.
	for i := range n / 2 {
		m := dialMQTT(t, srv, byte(4+i%2))
		device := fmt.Sprintf("idle-mqtt-%d", i)
		m.connect(device)
		m.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: socketserver.MQTTInboxTopic(device), Qos: 1}}})
		m.expect(packets.Suback)
	}
	// gRPC devices' calls park too (the connection's own frames, SETTINGS
	// and WINDOW_UPDATE, are answered first).
	grpcs := make([]*h2Device, n/2)
	for i := range grpcs {
		grpcs[i] = dialH2(t, srv.Addrs().GRPC)
		grpcs[i].welcome(fmt.Sprintf("idle-grpc-%d", i))
	}
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
	for i, d := range grpcs {
		d.send(protocol.TypePing, fmt.Appendf(nil, "g%d", i))
		if b := d.expect(protocol.TypePong); string(b) != fmt.Sprintf("g%d", i) {
			t.Fatalf("PONG %q to gRPC PING g%d", b, i)
		}
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
