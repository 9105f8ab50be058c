package grpcframe

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// Every frame survives the trip through its message unchanged, so that a
// gRPC device sees the bodies a TCP device sees.
func TestRoundTrip(t *testing.T) {
	server := []struct {
		typ  byte
		body []byte
	}{
		{protocol.TypeWelcome, protocol.MustJSON(protocol.Welcome{Server: "pod-a", SessionEpoch: 7, Resumed: true,
			HeartbeatMs: 15000, LastPublishID: 120, State: []byte(`{"k":[1,2]}`)})},
		{protocol.TypePing, []byte("p")},
		{protocol.TypePong, nil},
		{protocol.TypeDeliver, protocol.AppendSeqFrame(nil, 0, 1796220000000001, []byte("\x00payload"))[5:]},
		{protocol.TypePubAck, protocol.AppendSeqFrame(nil, 0, 42, nil)[5:]},
		{protocol.TypeGoAway, protocol.MustJSON(protocol.GoAway{Reason: "draining", ReconnectAfterMs: 1234})},
		{protocol.TypeError, protocol.MustJSON(protocol.ErrorBody{Code: protocol.CodeServerFull, Message: "full", RetryAfterMs: 1000})},
	}
	for _, f := range server {
		m, err := Server(f.typ, f.body)
		if err != nil {
			t.Fatalf("%s: %v", protocol.TypeName(f.typ), err)
		}
		typ, body, err := FromServer(m)
		if err != nil || typ != f.typ || !bytes.Equal(body, f.body) {
			t.Fatalf("%s: got %s %q (%v), want %q", protocol.TypeName(f.typ), protocol.TypeName(typ), body, err, f.body)
		}
	}
	client := []struct {
		typ  byte
		body []byte
	}{
		{protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "store-1", Token: "jwt", LastSeq: 41})},
		{protocol.TypePing, []byte("hb")},
		{protocol.TypePong, []byte("x")},
		{protocol.TypeAck, protocol.AppendSeqFrame(nil, 0, 99, nil)[5:]},
		{protocol.TypePublish, protocol.AppendSeqFrame(nil, 0, 3, []byte("up"))[5:]},
	}
	var num [8]byte
	for _, f := range client {
		m, err := Client(f.typ, f.body)
		if err != nil {
			t.Fatalf("%s: %v", protocol.TypeName(f.typ), err)
		}
		typ, body, err := FromClient(m, &num)
		if err != nil || typ != f.typ || !bytes.Equal(body, f.body) {
			t.Fatalf("%s: got %s %q (%v), want %q", protocol.TypeName(f.typ), protocol.TypeName(typ), body, err, f.body)
		}
	}
	if _, err := Client(protocol.TypeWelcome, nil); err == nil {
		t.Fatal("a WELCOME became a ClientFrame")
	}
	if _, err := Server(protocol.TypeHello, nil); err == nil {
		t.Fatal("a HELLO became a ServerFrame")
	}
}

// Each hands over every frame of a write in order, and a write that ends
// mid-frame is an error after the whole frames before it.
func TestEach(t *testing.T) {
	b := protocol.AppendFrame(nil, protocol.TypePing, []byte("a"))
	b = protocol.AppendFrame(b, protocol.TypePong, nil)
	whole := len(b)
	var got []byte
	n, err := Each(b, func(typ byte, body []byte) error {
		got = append(append(got, typ), body...)
		return nil
	})
	if err != nil || n != whole || !bytes.Equal(got, []byte{protocol.TypePing, 'a', protocol.TypePong}) {
		t.Fatalf("Each = %d, %v, frames %q; want %d, nil, PING a PONG", n, err, got, whole)
	}
	b = protocol.AppendFrame(b, protocol.TypePing, []byte("cut"))
	n, err = Each(b[:len(b)-1], func(byte, []byte) error { return nil })
	if err == nil || n != whole {
		t.Fatalf("truncated: Each = %d, %v; want %d and an error", n, err, whole)
	}
}

// AppendDeliver writes what proto.Marshal writes for the same DELIVER.
func TestAppendDeliver(t *testing.T) {
	for _, c := range []struct {
		seq     uint64
		payload []byte
	}{{1796220000000001, []byte("payload")}, {1, nil}, {0, []byte("x")}, {300, bytes.Repeat([]byte{7}, 200)}} {
		want, err := proto.Marshal(&scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Deliver{Deliver: &scpv1.Deliver{Seq: c.seq, Payload: c.payload}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendDeliver([]byte("head"), c.seq, c.payload); !bytes.Equal(got[4:], want) || string(got[:4]) != "head" {
			t.Fatalf("seq %d, %d bytes: got %x, want %x", c.seq, len(c.payload), got[4:], want)
		}
	}
}
