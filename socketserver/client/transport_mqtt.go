package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// mqttTransport speaks MQTT 5 to the server's MQTT listener
// ("mqtt://host:port", "mqtts://host:port" with TLS): the session's frames
// are translated by mqttCodec, so the device keeps every guarantee of the
// other transports. The server's DELIVERs carry their seq as a user
// property and the device's PUBLISHes their id, which is why this client
// speaks MQTT 5 only.
type mqttTransport struct{ c *Client }

func (t mqttTransport) dial(ctx context.Context, s *session, hello protocol.Hello) (link, error) {
	c := t.c
	hostport, secure := strings.CutPrefix(c.cfg.Addr, "mqtts://")
	if !secure {
		hostport = strings.TrimPrefix(c.cfg.Addr, "mqtt://")
	}
	hostport = strings.TrimSuffix(hostport, "/")
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.netDial(dctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	if secure || c.cfg.TLS != nil {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.cfg.TLS != nil {
			cfg = c.cfg.TLS.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(hostport)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	l := &streamLink{nc: nc, codec: &mqttCodec{r: protocol.NewMQTTReader(nc, c.cfg.MaxFrameBytes+512, readBufferSize)}}
	c.mu.Lock()
	s.extra = l.codec.AppendFrame(s.extra, protocol.TypeHello, protocol.MustJSON(hello))
	c.mu.Unlock()
	return l, nil
}

// mqttCodec translates MQTT 5 packets to and from the session's frames.
// ReadFrame runs on the read loop, the Append methods on the writer.
type mqttCodec struct {
	r       *protocol.MQTTReader
	scratch []byte

	mu      sync.Mutex
	outbox  string
	unacked []mqttReceived    // DELIVERs not yet PUBACKed, in order
	pubs    map[uint16]uint64 // packet id -> PUBLISH id, until its PUBACK
}

type mqttReceived struct {
	seq uint64
	pid uint16
}

func (m *mqttCodec) Buffered() bool    { return m.r.Buffered() }
func (m *mqttCodec) Release()          { m.r.Release() }
func (m *mqttCodec) SetMaxFrame(n int) { m.r.SetMaxPacket(n + 512) }

func (m *mqttCodec) ReadFrame() (byte, []byte, error) {
	for {
		first, rest, err := m.r.ReadPacket()
		if err != nil {
			return 0, nil, err
		}
		pk := packets.Packet{ProtocolVersion: 5}
		if err := pk.FixedHeader.Decode(first); err != nil {
			return 0, nil, err
		}
		pk.FixedHeader.Remaining = len(rest)
		switch pk.FixedHeader.Type {
		case packets.Connack:
			if err := pk.ConnackDecode(rest); err != nil {
				return 0, nil, err
			}
			if pk.ReasonCode != 0 {
				return m.refused(pk.ReasonCode, pk.Properties.ReasonString)
			}
			w := protocol.Welcome{Resumed: pk.SessionPresent, HeartbeatMs: int64(pk.Properties.ServerKeepAlive) * 1000,
				State: []byte("{}")}
			w.SessionEpoch, _ = userUint(pk.Properties.User, "session_epoch")
			w.LastPublishID, _ = userUint(pk.Properties.User, "last_publish_id")
			for _, p := range pk.Properties.User {
				if p.Key == "server" {
					w.Server = p.Val
				}
			}
			return protocol.TypeWelcome, protocol.MustJSON(w), nil
		case packets.Publish:
			if err := pk.PublishDecode(rest); err != nil {
				return 0, nil, err
			}
			seq, ok := userUint(pk.Properties.User, "seq")
			if !ok {
				return 0, nil, fmt.Errorf("MQTT PUBLISH %d without a seq", pk.PacketID)
			}
			m.mu.Lock()
			m.unacked = append(m.unacked, mqttReceived{seq, pk.PacketID})
			m.mu.Unlock()
			m.scratch = append(binary.BigEndian.AppendUint64(m.scratch[:0], seq), pk.Payload...)
			return protocol.TypeDeliver, m.scratch, nil
		case packets.Puback:
			if err := pk.PubackDecode(rest); err != nil {
				return 0, nil, err
			}
			if pk.ReasonCode >= 0x80 {
				return m.refused(pk.ReasonCode, "PUBLISH refused")
			}
			m.mu.Lock()
			id, ok := m.pubs[pk.PacketID]
			delete(m.pubs, pk.PacketID)
			m.mu.Unlock()
			if !ok {
				continue
			}
			m.scratch = binary.BigEndian.AppendUint64(m.scratch[:0], id)
			return protocol.TypePubAck, m.scratch, nil
		case packets.Pingresp:
			return protocol.TypePong, nil, nil
		case packets.Disconnect:
			if err := pk.DisconnectDecode(rest); err != nil {
				return 0, nil, err
			}
			return m.refused(pk.ReasonCode, pk.Properties.ReasonString)
		}
		// SUBACK, UNSUBACK: nothing the session asked for.
	}
}

// refused turns a CONNACK, PUBACK or DISCONNECT reason into the frame the
// session understands: GOAWAY for a server going away, else an ERROR.
func (m *mqttCodec) refused(reason byte, text string) (byte, []byte, error) {
	code := protocol.CodeBadFrame
	var retry int64
	switch reason {
	case 0x8B, 0x9C: // server shutting down, use another server
		return protocol.TypeGoAway, protocol.MustJSON(protocol.GoAway{Reason: "draining"}), nil
	case 0x86, 0x87:
		code = protocol.CodeUnauthorized
	case 0x88:
		code, retry = protocol.CodeUnavailable, 1000
	case 0x89, 0x97:
		code, retry = protocol.CodeServerFull, 1000
	case 0x8D:
		code = protocol.CodeHeartbeatTimeout
	case 0x8E:
		code = protocol.CodeSessionTakenOver
	case 0x95:
		code = protocol.CodeFrameTooLarge
	}
	return protocol.TypeError, protocol.MustJSON(protocol.ErrorBody{Code: code,
		Message: fmt.Sprintf("MQTT reason %#x: %s", reason, text), RetryAfterMs: retry}), nil
}

func (m *mqttCodec) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	var pk packets.Packet
	switch typ {
	case protocol.TypeHello:
		var h protocol.Hello
		_ = protocol.ParseJSON(body, &h)
		m.mu.Lock()
		m.outbox = "devices/" + h.Device + "/outbox"
		m.mu.Unlock()
		pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: h.Device,
			UsernameFlag: true, Username: []byte(h.Device), PasswordFlag: h.Token != "", Password: []byte(h.Token)}}
	case protocol.TypePing:
		pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	default:
		return dst // PONG: the server's heartbeat is the device's PINGREQ
	}
	return appendPacket(dst, pk)
}

// AppendSeqFrame sends an ACK as the PUBACKs of every message it covers,
// and a PUBLISH as a QoS 1 PUBLISH with its id.
func (m *mqttCodec) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch typ {
	case protocol.TypeAck:
		i := 0
		for ; i < len(m.unacked) && m.unacked[i].seq <= n; i++ {
			dst = appendPacket(dst, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: m.unacked[i].pid})
		}
		m.unacked = append(m.unacked[:0], m.unacked[i:]...)
	case protocol.TypePublish:
		pid := uint16((n-1)%65535) + 1
		if m.pubs == nil {
			m.pubs = make(map[uint16]uint64)
		}
		_, again := m.pubs[pid]
		m.pubs[pid] = n
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: again},
			TopicName: m.outbox, PacketID: pid, Payload: payload}
		pk.Properties.User = []packets.UserProperty{{Key: "id", Val: strconv.FormatUint(n, 10)}}
		dst = appendPacket(dst, pk)
	}
	return dst
}

func appendPacket(dst []byte, pk packets.Packet) []byte {
	pk.ProtocolVersion = 5
	var buf bytes.Buffer
	switch pk.FixedHeader.Type {
	case packets.Connect:
		_ = pk.ConnectEncode(&buf)
	case packets.Publish:
		_ = pk.PublishEncode(&buf)
	case packets.Puback:
		_ = pk.PubackEncode(&buf)
	case packets.Pingreq:
		_ = pk.PingreqEncode(&buf)
	}
	return append(dst, buf.Bytes()...)
}

func userUint(props []packets.UserProperty, key string) (uint64, bool) {
	for _, p := range props {
		if p.Key == key {
			n, err := strconv.ParseUint(p.Val, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
