package socketserver_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// mqttConn is an MQTT device on the wire; its packets are encoded and
// decoded by the codec of a broker no one here wrote (mochi-mqtt).
type mqttConn struct {
	t       *testing.T
	nc      net.Conn
	r       *protocol.MQTTReader
	version byte
}

func dialMQTT(t *testing.T, srv *socketserver.Server, version byte) *mqttConn {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Addrs().MQTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &mqttConn{t: t, nc: nc, r: protocol.NewMQTTReader(nc, 1<<20, 4096), version: version}
}

func (c *mqttConn) write(pks ...packets.Packet) {
	c.t.Helper()
	var buf bytes.Buffer
	for _, pk := range pks {
		pk.ProtocolVersion = c.version
		var err error
		switch pk.FixedHeader.Type {
		case packets.Connect:
			err = pk.ConnectEncode(&buf)
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Puback:
			err = pk.PubackEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		case packets.Unsubscribe:
			err = pk.UnsubscribeEncode(&buf)
		case packets.Pingreq:
			err = pk.PingreqEncode(&buf)
		case packets.Disconnect:
			err = pk.DisconnectEncode(&buf)
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
	if _, err := c.nc.Write(buf.Bytes()); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next packet; ok is false once the server closed.
func (c *mqttConn) read() (packets.Packet, bool) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	first, rest, err := c.r.ReadPacket()
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.t.Fatalf("no packet: %v", err)
		}
		return packets.Packet{}, false
	}
	pk := packets.Packet{ProtocolVersion: c.version}
	if err := pk.FixedHeader.Decode(first); err != nil {
		c.t.Fatal(err)
	}
	pk.FixedHeader.Remaining = len(rest)
	rest = bytes.Clone(rest)
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(rest)
	case packets.Publish:
		err = pk.PublishDecode(rest)
	case packets.Puback:
		err = pk.PubackDecode(rest)
	case packets.Suback:
		err = pk.SubackDecode(rest)
	case packets.Unsuback:
		err = pk.UnsubackDecode(rest)
	case packets.Disconnect:
		err = pk.DisconnectDecode(rest)
	}
	if err != nil {
		c.t.Fatalf("decoding packet type %d: %v", pk.FixedHeader.Type, err)
	}
	return pk, true
}

func (c *mqttConn) expect(typ byte) packets.Packet {
	c.t.Helper()
	pk, ok := c.read()
	if !ok || pk.FixedHeader.Type != typ {
		c.t.Fatalf("got packet type %d (open: %v), want %d", pk.FixedHeader.Type, ok, typ)
	}
	return pk
}

// expectEnd reads an MQTT 5 DISCONNECT with reason (0: none, as 3.1.1
// has) and the close.
func (c *mqttConn) expectEnd(reason byte) {
	c.t.Helper()
	if reason != 0 {
		if pk := c.expect(packets.Disconnect); pk.ReasonCode != reason {
			c.t.Fatalf("DISCONNECT %#x (%s), want %#x", pk.ReasonCode, pk.Properties.ReasonString, reason)
		}
	}
	if pk, ok := c.read(); ok {
		c.t.Fatalf("packet type %d, want the connection closed", pk.FixedHeader.Type)
	}
}

func connectPacket(device, tok string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: device, Keepalive: 30,
		UsernameFlag: true, Username: []byte("any"), PasswordFlag: tok != "", Password: []byte(tok)}}
}

func (c *mqttConn) connect(device string) packets.Packet {
	c.t.Helper()
	c.write(connectPacket(device, token(device, time.Hour)))
	ack := c.expect(packets.Connack)
	if ack.ReasonCode != 0 {
		c.t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	return ack
}

// sync sends PINGREQ and waits for PINGRESP: the server has handled every
// packet sent before.
func (c *mqttConn) sync() {
	c.t.Helper()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	c.expect(packets.Pingresp)
}

func puback(pid uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pid}
}

func mqttPublish(topic string, qos byte, pid uint16, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic,
		PacketID: pid, Payload: []byte(payload)}
}

func forEachMQTT(t *testing.T, f func(t *testing.T, version byte)) {
	t.Run("3.1.1", func(t *testing.T) { f(t, 4) })
	t.Run("5.0", func(t *testing.T) { f(t, 5) })
}

// Stored messages go out as QoS 1 PUBLISHes on the inbox topic; PUBACKs in
// any order move the ACK over the acknowledged prefix only, and a PUBACK
// sent with the DISCONNECT still counts.
func TestMQTTDeliveryAcksThePrefix(t *testing.T) {
	forEachMQTT(t, func(t *testing.T, version byte) {
		srv := startServer(t, store.NewMemory(), "pod-a", nil)
		device := fmt.Sprintf("mq-%d", version)
		var seqs []uint64
		for i := 1; i <= 3; i++ {
			seqs = append(seqs, send(t, srv, device, fmt.Sprintf("m%d", i)))
		}
		c := dialMQTT(t, srv, version)
		ack := c.connect(device)
		if version == 5 && (!ack.Properties.MaximumQosFlag || ack.Properties.MaximumQos != 1 || ack.Properties.RetainAvailable != 0) {
			t.Fatalf("CONNACK properties %+v: want Maximum QoS 1, no retain", ack.Properties)
		}
		var pids []uint16
		for i := 1; i <= 3; i++ {
			pk := c.expect(packets.Publish)
			if pk.TopicName != socketserver.MQTTInboxTopic(device) || pk.FixedHeader.Qos != 1 || pk.FixedHeader.Dup || string(pk.Payload) != fmt.Sprintf("m%d", i) {
				t.Fatalf("PUBLISH %d: topic %q QoS %d DUP %v payload %q (want no DUP: the session's first connection)", i, pk.TopicName, pk.FixedHeader.Qos, pk.FixedHeader.Dup, pk.Payload)
			}
			if want := fmt.Sprint(seqs[i-1]); version == 5 && (len(pk.Properties.User) != 1 || pk.Properties.User[0] != packets.UserProperty{Key: "seq", Val: want}) {
				t.Fatalf("PUBLISH %d user properties %v, want seq=%s", i, pk.Properties.User, want)
			}
			pids = append(pids, pk.PacketID)
		}
		c.write(puback(pids[2]), puback(pids[1]))
		c.sync()
		if d := deviceInfo(t, srv, device); d.Pending != 3 {
			t.Fatalf("after PUBACKs of 3 and 2: %d pending, want 3 (1 is not acknowledged)", d.Pending)
		}
		c.write(puback(pids[0]), packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		eventually(t, "all acknowledged", func() bool { return deviceInfo(t, srv, device).Pending == 0 })
	})
}

// Resumed, unacknowledged messages come again with their packet ids and
// DUP, on either store; a message stored while the device is connected is
// a first attempt.
func TestMQTTRedeliveryKeepsPacketIDs(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func() store.Store) {
		srv := startServer(t, newStore(), "pod-a", nil)
		send(t, srv, "mq", "m1")
		c := dialMQTT(t, srv, 5)
		c.connect("mq")
		first := c.expect(packets.Publish)
		c.nc.Close()
		eventually(t, "disconnect seen", func() bool { return !deviceInfo(t, srv, "mq").Connected })
		c2 := dialMQTT(t, srv, 5)
		c2.write(connectPacket("mq", token("mq", time.Hour)))
		if ack := c2.expect(packets.Connack); !ack.SessionPresent {
			t.Fatal("CONNACK without session present on resume")
		}
		if again := c2.expect(packets.Publish); again.PacketID != first.PacketID || string(again.Payload) != "m1" || !again.FixedHeader.Dup {
			t.Fatalf("re-sent as %d %q DUP %v, first as %d", again.PacketID, again.Payload, again.FixedHeader.Dup, first.PacketID)
		}
		send(t, srv, "mq", "m2")
		if next := c2.expect(packets.Publish); string(next.Payload) != "m2" || next.FixedHeader.Dup {
			t.Fatalf("new message %q with DUP %v, want m2 without", next.Payload, next.FixedHeader.Dup)
		}
	})
}

// A device's PUBLISH on its outbox is stored once before its PUBACK, also
// when retransmitted with DUP; QoS 0 has no PUBACK; other topics are refused.
func TestMQTTPublishUpstream(t *testing.T) {
	forEachMQTT(t, func(t *testing.T, version byte) {
		srv := startServer(t, store.NewMemory(), "pod-a", nil)
		device := fmt.Sprintf("up-%d", version)
		c := dialMQTT(t, srv, version)
		c.connect(device)
		out := socketserver.MQTTOutboxTopic(device)
		c.write(mqttPublish(out, 1, 7, "p1"))
		if pk := c.expect(packets.Puback); pk.PacketID != 7 {
			t.Fatalf("PUBACK for packet %d, want 7", pk.PacketID)
		}
		dup := mqttPublish(out, 1, 7, "p1")
		dup.FixedHeader.Dup = true
		c.write(dup, mqttPublish(out, 0, 0, "p2"))
		if pk := c.expect(packets.Puback); pk.PacketID != 7 {
			t.Fatalf("PUBACK for packet %d, want 7", pk.PacketID)
		}
		c.sync() // no PUBACK for QoS 0 came before the PINGRESP
		var page adminapi.UpstreamPage
		_, body := api(t, srv, "GET", "/v1/upstream?after=0", "")
		if err := json.Unmarshal([]byte(body), &page); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range page.Entries {
			got = append(got, fmt.Sprintf("%s/%d/%s", e.Device, e.ID, e.Payload))
		}
		if want := fmt.Sprintf("%s/1/p1 %s/2/p2", device, device); strings.Join(got, " ") != want {
			t.Fatalf("upstream %v, want %s", got, want)
		}
		// Another device's topic: MQTT 5 refuses the PUBLISH, 3.1.1 can only close.
		c.write(mqttPublish("devices/other/outbox", 1, 8, "x"))
		if version == 5 {
			if pk := c.expect(packets.Puback); pk.PacketID != 8 || pk.ReasonCode != 0x87 {
				t.Fatalf("PUBACK %d reason %#x, want 8 not authorized", pk.PacketID, pk.ReasonCode)
			}
			c.sync()
		} else {
			c.expectEnd(0)
		}
	})
}

// A PUBACK followed in the same read by a packet the transport answers
// itself (SUBSCRIBE) is applied at once, not when the device next sends.
func TestMQTTAckBeforeSubscribeIsApplied(t *testing.T) {
	forEachMQTT(t, func(t *testing.T, version byte) {
		srv := startServer(t, store.NewMemory(), "pod-a", nil)
		send(t, srv, "sub-ack", "m1")
		c := dialMQTT(t, srv, version)
		c.connect("sub-ack")
		pk := c.expect(packets.Publish)
		c.write(puback(pk.PacketID), packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 3,
			Filters: packets.Subscriptions{{Filter: "devices/sub-ack/inbox", Qos: 1}}})
		c.expect(packets.Suback)
		eventually(t, "the PUBACK applied", func() bool { return deviceInfo(t, srv, "sub-ack").Pending == 0 })
	})
}

func TestMQTTSubscribeOnlyOwnInbox(t *testing.T) {
	forEachMQTT(t, func(t *testing.T, version byte) {
		srv := startServer(t, store.NewMemory(), "pod-a", nil)
		c := dialMQTT(t, srv, version)
		c.connect("sub")
		c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 3,
			Filters: packets.Subscriptions{{Filter: "devices/sub/inbox", Qos: 1}, {Filter: "devices/sub/#", Qos: 0},
				{Filter: "#", Qos: 1}, {Filter: "devices/other/inbox", Qos: 1}}})
		refused := byte(0x80)
		if version == 5 {
			refused = 0x87
		}
		if pk := c.expect(packets.Suback); pk.PacketID != 3 || !bytes.Equal(pk.ReasonCodes, []byte{1, 0, refused, refused}) {
			t.Fatalf("SUBACK %d %x", pk.PacketID, pk.ReasonCodes)
		}
		c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 4,
			Filters: packets.Subscriptions{{Filter: "devices/sub/inbox"}}})
		if pk := c.expect(packets.Unsuback); pk.PacketID != 4 {
			t.Fatalf("UNSUBACK for packet %d, want 4", pk.PacketID)
		}
	})
}

func TestMQTTRefusals(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.MaxFrameBytes = 1024 })
	for _, c := range []struct {
		name    string
		version byte
		connect packets.Packet
		connack byte
	}{
		{"bad token 3.1.1", 4, connectPacket("d1", "nope"), 5},
		{"bad token 5.0", 5, connectPacket("d1", "nope"), 0x87},
		{"no token 5.0", 5, connectPacket("d1", ""), 0x87},
		{"bad client id 3.1.1", 4, connectPacket("a b", token("a b", time.Hour)), 2},
		{"bad client id 5.0", 5, connectPacket("", ""), 0x85},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := dialMQTT(t, srv, c.version)
			m.write(c.connect)
			if pk := m.expect(packets.Connack); pk.ReasonCode != c.connack {
				t.Fatalf("CONNACK %#x, want %#x", pk.ReasonCode, c.connack)
			}
			m.expectEnd(0)
		})
	}
	t.Run("QoS 2", func(t *testing.T) {
		m := dialMQTT(t, srv, 5)
		m.connect("q2")
		m.write(mqttPublish(socketserver.MQTTOutboxTopic("q2"), 2, 1, "x"))
		m.expectEnd(0x9B)
	})
	t.Run("too large", func(t *testing.T) {
		m := dialMQTT(t, srv, 5)
		m.connect("big")
		m.write(mqttPublish(socketserver.MQTTOutboxTopic("big"), 1, 1, strings.Repeat("x", 4096)))
		m.expectEnd(0x95)
	})
}

// Takeover across transports, and a drain: MQTT 5 hears why, 3.1.1 is closed.
func TestMQTTTakeoverAndDrain(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	m := dialMQTT(t, srv, 5)
	m.connect("tk")
	tcp := dial(t, srv.Addrs().TCP)
	tcp.welcome("tk", 0)
	m.expectEnd(0x8E)
	m2 := dialMQTT(t, srv, 4)
	m2.connect("tk")
	tcp.expectError(protocol.CodeSessionTakenOver)

	m5 := dialMQTT(t, srv, 5)
	m5.connect("dr")
	if code, _ := api(t, srv, "POST", "/drain", ""); code != 202 {
		t.Fatalf("POST /drain: %d", code)
	}
	m5.expectEnd(0x8B)
	m2.expectEnd(0)
}

// An MQTT 5 device that numbers its PUBLISHes (user property "id") is
// deduplicated exactly, also across connections.
func TestMQTTExactPublishIDs(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	out := socketserver.MQTTOutboxTopic("ex")
	for i := 0; i < 2; i++ { // the second connection retransmits
		c := dialMQTT(t, srv, 5)
		c.connect("ex")
		pk := mqttPublish(out, 1, uint16(5+i), "p")
		pk.Properties.User = []packets.UserProperty{{Key: "id", Val: "42"}}
		c.write(pk)
		c.expect(packets.Puback)
		c.nc.Close()
		eventually(t, "disconnect seen", func() bool { return !deviceInfo(t, srv, "ex").Connected })
	}
	var page adminapi.UpstreamPage
	_, body := api(t, srv, "GET", "/v1/upstream?after=0", "")
	if err := json.Unmarshal([]byte(body), &page); err != nil || len(page.Entries) != 1 || page.Entries[0].ID != 42 {
		t.Fatalf("upstream %s: want one entry with id 42", body)
	}
}

// An MQTT 5 device's Receive Maximum bounds the deliveries in flight; each
// acknowledged one lets the next go.
func TestMQTTReceiveMaximum(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	for i := 1; i <= 5; i++ {
		send(t, srv, "rm", fmt.Sprintf("m%d", i))
	}
	c := dialMQTT(t, srv, 5)
	pk := connectPacket("rm", token("rm", time.Hour))
	pk.Properties.ReceiveMaximum = 2
	c.write(pk)
	c.expect(packets.Connack)
	next := func(want string) uint16 {
		t.Helper()
		p := c.expect(packets.Publish)
		if string(p.Payload) != want {
			t.Fatalf("PUBLISH %q, want %q", p.Payload, want)
		}
		return p.PacketID
	}
	p1, p2 := next("m1"), next("m2")
	c.sync() // PINGRESP, not a third PUBLISH: two are in flight
	c.write(puback(p2))
	c.sync() // out of order: 1 still holds its place
	c.write(puback(p1))
	p3, p4 := next("m3"), next("m4")
	c.sync()
	c.write(puback(p3), puback(p4))
	c.write(puback(next("m5")))
	eventually(t, "all acknowledged", func() bool { return deviceInfo(t, srv, "rm").Pending == 0 })
}

// A silent MQTT 3.1.1 device is cut after one and a half of its own
// keepalive, not after the server's much longer heartbeat timeout.
func TestMQTTKeepalive311(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) {
		c.HeartbeatInterval, c.HeartbeatTimeout = time.Minute, 3*time.Minute
	})
	c := dialMQTT(t, srv, 4)
	pk := connectPacket("ka", token("ka", time.Hour))
	pk.Connect.Keepalive = 1
	c.write(pk)
	c.expect(packets.Connack)
	c.expectEnd(0) // within the read's 10 s, far below 3 minutes
}
