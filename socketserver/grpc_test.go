package socketserver_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/internal/testcert"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func grpcDial(t *testing.T, addr string, opts ...grpc.CallOption) *grpcLink {
	t.Helper()
	l, err := dialGRPCLink(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.close)
	return l
}

func (l *grpcLink) expect(t *testing.T, typ byte) []byte {
	t.Helper()
	got, body, err := l.read()
	if err != nil {
		t.Fatalf("waiting for %s: %v", protocol.TypeName(typ), err)
	}
	if got != typ {
		t.Fatalf("got %s %s, want %s", protocol.TypeName(got), body, protocol.TypeName(typ))
	}
	return body
}

// expectError reads an ERROR with code, then the end of the call.
func (l *grpcLink) expectError(t *testing.T, code protocol.Code) {
	t.Helper()
	var e protocol.ErrorBody
	if err := json.Unmarshal(l.expect(t, protocol.TypeError), &e); err != nil || e.Code != code {
		t.Fatalf("ERROR %+v, want %s (%v)", e, code, err)
	}
	if _, err := l.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after ERROR: %v, want the end of the call", err)
	}
}

func (l *grpcLink) welcome(t *testing.T, device string, lastSeq uint64, tok string) protocol.Welcome {
	t.Helper()
	if err := l.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: device, Token: tok, LastSeq: lastSeq})); err != nil {
		t.Fatal(err)
	}
	var w protocol.Welcome
	if err := json.Unmarshal(l.expect(t, protocol.TypeWelcome), &w); err != nil {
		t.Fatal(err)
	}
	return w
}

// A session over gRPC: the token from the call's metadata, delivery,
// ACK, PUBLISH and PING, each frame one message.
func TestGRPCSession(t *testing.T) {
	st := store.NewMemory()
	srv := startServer(t, st, "pod-a", nil)
	seq := send(t, srv, "g1", "before")
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token("g1", time.Hour))
	cc, err := grpc.NewClient(srv.Addrs().GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := scpv1.NewDeviceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := &grpcLink{cc: cc, stream: stream, cancel: func() {}}
	w := l.welcome(t, "g1", 0, "") // no token in HELLO: the metadata's
	if w.Server != "pod-a" || w.SessionEpoch == 0 || string(w.State) != "{}" {
		t.Fatalf("welcome %+v", w)
	}
	got, payload, _ := protocol.ParseSeq(l.expect(t, protocol.TypeDeliver))
	if got != seq || string(payload) != "before" {
		t.Fatalf("DELIVER %d %q, want %d before", got, payload, seq)
	}
	_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypeAck, seq, nil))
	_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypePublish, 7, []byte("up")))
	if id, _ := protocol.ParseNumber(l.expect(t, protocol.TypePubAck)); id != 7 {
		t.Fatalf("PUBACK %d, want 7", id)
	}
	_ = l.send(protocol.TypePing, []byte("hb"))
	if pong := l.expect(t, protocol.TypePong); string(pong) != "hb" {
		t.Fatalf("PONG %q", pong)
	}
	// Messages larger than an HTTP/2 frame (16 KiB) cross several DATA
	// frames, both ways.
	big := strings.Repeat("0123456789abcdef", 3000)
	bigSeq := send(t, srv, "g1", big)
	if got, p, _ := protocol.ParseSeq(l.expect(t, protocol.TypeDeliver)); got != bigSeq || string(p) != big {
		t.Fatalf("DELIVER of %d bytes: seq %d, %d bytes back", len(big), got, len(p))
	}
	_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypeAck, bigSeq, nil))
	_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypePublish, 8, []byte(big)))
	if id, _ := protocol.ParseNumber(l.expect(t, protocol.TypePubAck)); id != 8 {
		t.Fatalf("PUBACK %d, want 8", id)
	}
	if page := st.ReadUpstream(0, 10); len(page) != 2 || string(page[1].Payload) != big {
		t.Fatalf("upstream: %d entries", len(page))
	}
	eventually(t, "the ACK stored", func() bool {
		code, body := api(t, srv, "GET", "/v1/devices/g1", "")
		return code == 200 && strings.Contains(body, `"pending":0`)
	})
	// Ending its side of the stream ends the connection.
	_ = stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v", err)
	}
	eventually(t, "the connection gone", func() bool { return srv.Connections() == 0 })
}

// The frame checks of the other transports, in gRPC terms.
func TestGRPCRefusals(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.HelloTimeout = 300 * time.Millisecond
		c.HeartbeatInterval = 200 * time.Millisecond
		c.MaxFrameBytes = 1024
	})
	addr := srv.Addrs().GRPC
	t.Run("no frame", func(t *testing.T) {
		l := grpcDial(t, addr)
		_ = l.stream.Send(&scpv1.ClientFrame{})
		l.expectError(t, protocol.CodeBadFrame)
	})
	t.Run("hello required", func(t *testing.T) {
		l := grpcDial(t, addr)
		_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypeAck, 1, nil))
		l.expectError(t, protocol.CodeHelloRequired)
	})
	t.Run("unsupported protocol", func(t *testing.T) {
		l := grpcDial(t, addr)
		_ = l.stream.Send(&scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Hello{Hello: &scpv1.Hello{Device: "g", Token: token("g", time.Hour)}}})
		l.expectError(t, protocol.CodeUnsupportedProtocol)
	})
	t.Run("unauthorized", func(t *testing.T) {
		l := grpcDial(t, addr)
		_ = l.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "g", Token: token("other", time.Hour)}))
		l.expectError(t, protocol.CodeUnauthorized)
	})
	t.Run("hello timeout", func(t *testing.T) {
		l := grpcDial(t, addr)
		_ = l.send(protocol.TypePing, nil)
		l.expect(t, protocol.TypePong)
		l.expectError(t, protocol.CodeHelloTimeout)
	})
	t.Run("heartbeat timeout", func(t *testing.T) {
		l := grpcDial(t, addr)
		l.welcome(t, "silent", 0, token("silent", time.Hour))
		l.expectError(t, protocol.CodeHeartbeatTimeout)
	})
	t.Run("frame too large", func(t *testing.T) {
		l := grpcDial(t, addr)
		l.welcome(t, "big", 0, token("big", time.Hour))
		_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypePublish, 1, bytes.Repeat([]byte("x"), 1024-8)))
		l.expectError(t, protocol.CodeFrameTooLarge)
	})
	t.Run("message above the gRPC limit", func(t *testing.T) {
		// Refused from its length prefix, before it is read.
		l := grpcDial(t, addr)
		l.welcome(t, "huge", 0, token("huge", time.Hour))
		_ = l.write(protocol.AppendSeqFrame(nil, protocol.TypePublish, 1, bytes.Repeat([]byte("x"), 4096)))
		l.expectError(t, protocol.CodeFrameTooLarge)
		eventually(t, "the connection gone", func() bool { return srv.Connections() == 0 })
	})
}

// Over --max-connections a new gRPC connection is closed at once (no
// answer can precede the HTTP/2 handshake); once a device leaves, the
// next one gets in.
func TestGRPCConnectionLimit(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxConnections = 1 })
	first := grpcDial(t, srv.Addrs().GRPC)
	first.welcome(t, "d1", 0, token("d1", time.Hour))
	// The call fails when it starts, or at its first read.
	second, err := dialGRPCLink(srv.Addrs().GRPC)
	if err == nil {
		defer second.close()
		_ = second.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "d2", Token: token("d2", time.Hour)}))
		_, err = second.stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("over the limit: %v, want UNAVAILABLE", err)
	}
	first.close()
	// The server sees the first connection end a moment later.
	eventually(t, "a new device admitted", func() bool {
		l, err := dialGRPCLink(srv.Addrs().GRPC)
		if err != nil {
			return false
		}
		defer l.close()
		_ = l.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "d3", Token: token("d3", time.Hour)}))
		typ, _, err := l.read()
		return err == nil && typ == protocol.TypeWelcome
	})
}

// Takeover across transports: a device on gRPC is taken over by its HELLO
// over TCP on another server, and takes the session back over gRPC.
func TestGRPCTakeoverAcrossTransports(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	g := grpcDial(t, a.Addrs().GRPC)
	w1 := g.welcome(t, "x1", 0, token("x1", time.Hour))
	c := dial(t, b.Addrs().TCP)
	w2 := c.welcome("x1", 0)
	if !w2.Resumed || w2.SessionEpoch <= w1.SessionEpoch {
		t.Fatalf("TCP welcome %+v after gRPC %+v", w2, w1)
	}
	g.expectError(t, protocol.CodeSessionTakenOver)
	seq := send(t, a, "x1", "to tcp")
	if got, _, _ := protocol.ParseSeq(c.expect(protocol.TypeDeliver).body); got != seq {
		t.Fatalf("TCP got seq %d, want %d", got, seq)
	}
	g2 := grpcDial(t, a.Addrs().GRPC)
	w3 := g2.welcome(t, "x1", seq, token("x1", time.Hour))
	if w3.SessionEpoch <= w2.SessionEpoch {
		t.Fatalf("gRPC welcome %+v after TCP %+v", w3, w2)
	}
	c.expectError(protocol.CodeSessionTakenOver)
	seq2 := send(t, b, "x1", "to grpc")
	if got, p, _ := protocol.ParseSeq(g2.expect(t, protocol.TypeDeliver)); got != seq2 || string(p) != "to grpc" {
		t.Fatalf("gRPC got seq %d %q, want %d", got, p, seq2)
	}
}

// Drain over gRPC: the health service turns NOT_SERVING with /readyz, the
// device gets its GOAWAY frame, and once the drain is over a new device is
// still answered with GOAWAY (as on TCP), not refused.
func TestGRPCDrain(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	cc, err := grpc.NewClient(srv.Addrs().GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health check %q: %v", service, err)
		}
		return r.Status
	}
	if s := check("scp.v1.Device"); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v", s)
	}
	l := grpcDial(t, srv.Addrs().GRPC)
	l.welcome(t, "d1", 0, token("d1", time.Hour))
	done := srv.Drain()
	if s := check(""); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while draining: %v", s)
	}
	var g protocol.GoAway
	if err := json.Unmarshal(l.expect(t, protocol.TypeGoAway), &g); err != nil || g.Reason != "draining" {
		t.Fatalf("GOAWAY %+v %v", g, err)
	}
	_ = l.stream.CloseSend()
	if _, err := l.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after GOAWAY and CloseSend: %v", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not finish once the device left")
	}
	if s := check(""); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after the drain: %v", s)
	}
	late := grpcDial(t, srv.Addrs().GRPC)
	_ = late.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "d2", Token: token("d2", time.Hour)}))
	g = protocol.GoAway{}
	if err := json.Unmarshal(late.expect(t, protocol.TypeGoAway), &g); err != nil || g.Reason != "draining" {
		t.Fatalf("GOAWAY to a device after the drain: %+v %v", g, err)
	}
}

// gRPC's TLS handshakes take --max-handshakes slots like the other
// listeners': while idle connections hold them all, a gRPC client's
// handshake does not run; it does once one of them leaves.
func TestGRPCTLSHandshakeBound(t *testing.T) {
	cert, pool := testcert.SelfSigned(t)
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		c.MaxHandshakes = 2
		c.HelloTimeout = time.Minute
		c.HandshakeTimeout = 30 * time.Second
	})
	idle := holdIdle(t, srv.Addrs().GRPC, 2)
	cc, err := grpc.NewClient(srv.Addrs().GRPC, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err == nil {
		t.Fatal("a third handshake ran while two were in progress")
	}
	idle[0].Close()
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("after an idle handshake left: %v", err)
	}
}
