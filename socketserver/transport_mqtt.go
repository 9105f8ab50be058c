package socketserver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// MQTT 3.1.1 and 5.0 devices on the session model. The transport
// translates, and the session stays the one of every transport: CONNECT is
// the HELLO (client identifier = device, password = token); each DELIVER
// goes out as a QoS 1 PUBLISH on the device's inbox topic, and their
// PUBACKs, which may come in any order, become one cumulative ACK of the
// contiguous acknowledged prefix; a QoS 0 or 1 PUBLISH on the device's
// outbox topic is a PUBLISH of the protocol with the session's next id.
// SUBSCRIBE is answered here: nothing is routed between devices and
// nothing is retained. Packets are decoded by a maintained codec
// (mochi-mqtt's packets); the hot ones (PUBLISH, PUBACK) are encoded here.

const (
	mqttName = "mqtt"
	// mqttOverhead is what a PUBLISH adds to a payload of --max-frame-bytes:
	// topic, packet id and MQTT 5 properties.
	mqttOverhead = 512
	// mqttMaxKeepalive bounds how long a 3.1.1 device's own keepalive may
	// keep a silent connection open (MQTT 5 devices get the server's).
	mqttMaxKeepalive = 30 * time.Minute
)

// MQTT packet types (first byte >> 4).
const (
	mqttConnect     = 1
	mqttPublish     = 3
	mqttPuback      = 4
	mqttSubscribe   = 8
	mqttUnsubscribe = 10
	mqttPingreq     = 12
	mqttDisconnect  = 14
)

// Reason codes of MQTT 5 (3.1.1's CONNACK codes are mapped in connackCode).
const (
	rcUnspecified       = 0x80
	rcMalformed         = 0x81
	rcProtocolError     = 0x82
	rcBadClientID       = 0x85
	rcNotAuthorized     = 0x87
	rcServerUnavailable = 0x88
	rcServerBusy        = 0x89
	rcShuttingDown      = 0x8B
	rcKeepAliveTimeout  = 0x8D
	rcSessionTakenOver  = 0x8E
	rcPacketTooLarge    = 0x95
	rcRetainUnsupported = 0x9A
	rcQoSUnsupported    = 0x9B
	rcUseAnotherServer  = 0x9C
)

// MQTTInboxTopic and MQTTOutboxTopic are a device's two topics.
func MQTTInboxTopic(device string) string  { return mqttTopicPrefix + device + mqttInbox }
func MQTTOutboxTopic(device string) string { return mqttTopicPrefix + device + mqttOutbox }

const (
	mqttTopicPrefix = "devices/"
	mqttInbox       = "/inbox"
	mqttOutbox      = "/outbox"
)

// mqttTopicIs reports whether topic is the device's topic with suffix
// without building it: a connection keeps no topic strings.
func mqttTopicIs(topic, device, suffix string) bool {
	n := len(mqttTopicPrefix)
	return len(topic) == n+len(device)+len(suffix) && topic[:n] == mqttTopicPrefix &&
		topic[n:n+len(device)] == device && topic[n+len(device):] == suffix
}

type mqttFactory struct{}

func (mqttFactory) name() string { return mqttName }

func (mqttFactory) open(nc net.Conn, maxFrame int, out *writer) transport {
	return &mqttTransport{r: protocol.NewMQTTReader(nc, maxFrame+mqttOverhead, readBufferSize), out: out,
		heartbeat: out.c.srv.cfg.HeartbeatInterval}
}

// mqttTransport is one MQTT connection's translation.
type mqttTransport struct {
	r         *protocol.MQTTReader
	out       *writer
	heartbeat time.Duration

	// Set by the read loop at CONNECT and HELLO, before the WELCOME is
	// queued; read-only after.
	version   byte // 4 (3.1.1) or 5
	clean     bool
	keepalive time.Duration
	device    string
	// dupThrough: deliveries up to this seq were stored before this
	// connection of a resumed session, so an earlier connection may have
	// sent them; they go out with DUP.
	dupThrough uint64

	// Read loop only.
	connected bool
	pubNext   uint64 // the next upstream id
	lastPid   uint16 // the latest QoS 1 PUBLISH: packet id, upstream id
	lastID    uint64
	scratch   []byte
	failure   byte // the reason code of the error ReadFrame returns, 0: from its code

	// Writer only (under its lock).
	connacked bool

	// receiveMax bounds the deliveries in flight (an MQTT 5 device's
	// Receive Maximum); 0: unbounded (3.1.1).
	receiveMax int

	mu       sync.Mutex // between the read loop and the writer
	inflight []mqttInflight
	// unacked maps the packet ids of the device's QoS 1 PUBLISHes to their
	// upstream ids until their PUBACK is written.
	unacked map[uint16]uint64
}

type mqttInflight struct {
	seq   uint64
	acked bool
}

// mqttPacketID maps a seq onto the 16-bit packet ids (1..65535): a
// message keeps its id when it is sent again, on any pod.
func mqttPacketID(seq uint64) uint16 { return uint16((seq-1)%65535) + 1 }

func (t *mqttTransport) name() string { return mqttName }

func (t *mqttTransport) Buffered() bool { return t.r.Buffered() }

// Release also drops what an idle connection need not keep.
func (t *mqttTransport) Release() {
	t.r.Release()
	t.scratch = nil
	t.mu.Lock()
	if len(t.inflight) == 0 {
		t.inflight = nil
	}
	if len(t.unacked) == 0 {
		t.unacked = nil
	}
	t.mu.Unlock()
}
func (t *mqttTransport) SetMaxFrame(n int) { t.r.SetMaxPacket(n + mqttOverhead) }

func (t *mqttTransport) rawConn(nc net.Conn) (syscall.RawConn, bool) { return socketRawConn(nc) }

// appendClose: MQTT just closes (5.0's DISCONNECT was the ERROR or GOAWAY).
func (t *mqttTransport) appendClose(dst []byte) []byte { return dst }

// goAwayEnds: a DISCONNECT or a close is what tells an MQTT device to go.
func (t *mqttTransport) goAwayEnds() {}

// windowFree: an MQTT 5 device's Receive Maximum less the deliveries not
// yet in the acknowledged prefix (those acknowledged out of order count
// until the prefix reaches them, so the limit is never exceeded).
func (t *mqttTransport) windowFree() int {
	if t.receiveMax == 0 {
		return math.MaxInt
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.receiveMax - len(t.inflight)
}

// welcomed learns the session's device, last upstream id and which
// deliveries may be re-sends.
func (t *mqttTransport) welcomed(device string, sess store.Session) {
	t.device = device
	t.pubNext = sess.LastPublishID + 1
	if sess.Resumed {
		t.dupThrough = sess.HeadSeq
	}
}

// silenceLimit is how long the device may stay silent: MQTT's one and a
// half keepalives of a 3.1.1 device; 5.0 devices use the server's
// heartbeat (CONNACK's Server Keep Alive).
func (t *mqttTransport) silenceLimit() time.Duration {
	if t.version == 5 || t.keepalive == 0 {
		return 0
	}
	return min(t.keepalive*3/2, mqttMaxKeepalive)
}

// ReadFrame reads packets until one means a frame to the session; the
// others (SUBSCRIBE, a PUBACK that does not move the ACK) are answered
// here, and TypeNone says so when no more input is buffered.
func (t *mqttTransport) ReadFrame() (byte, []byte, error) {
	for {
		first, rest, err := t.r.ReadPacket()
		if err != nil {
			return 0, nil, err
		}
		typ, body, err := t.translate(first, rest)
		if err != nil || typ != protocol.TypeNone || !t.r.Buffered() {
			return typ, body, err
		}
	}
}

// fail is an error for the session, with the MQTT 5 reason code its
// DISCONNECT (or CONNACK) carries.
func (t *mqttTransport) fail(reason byte, code protocol.Code, format string, args ...any) error {
	t.failure = reason
	return protocol.Errorf(code, format, args...)
}

func (t *mqttTransport) translate(first byte, rest []byte) (byte, []byte, error) {
	var fh packets.FixedHeader
	if err := fh.Decode(first); err != nil {
		return 0, nil, t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT: %v", err)
	}
	fh.Remaining = len(rest)
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: t.version}
	if !t.connected && fh.Type != mqttConnect {
		return 0, nil, t.fail(rcProtocolError, protocol.CodeHelloRequired, "MQTT: the first packet must be CONNECT")
	}
	switch fh.Type {
	case mqttConnect:
		return t.connect(&pk, rest)
	case mqttPublish:
		return t.publish(&pk, rest)
	case mqttPuback:
		if len(rest) < 2 {
			return 0, nil, t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT: PUBACK without a packet id")
		}
		return t.puback(binary.BigEndian.Uint16(rest))
	case mqttPingreq:
		return protocol.TypePing, nil, nil
	case mqttSubscribe, mqttUnsubscribe:
		return 0, nil, t.subscribe(&pk, rest)
	case mqttDisconnect:
		return 0, nil, io.EOF
	}
	return 0, nil, t.fail(rcProtocolError, protocol.CodeBadFrame, "MQTT: packet type %d is not sent by devices here", fh.Type)
}

func (t *mqttTransport) connect(pk *packets.Packet, rest []byte) (byte, []byte, error) {
	if t.connected {
		return 0, nil, t.fail(rcProtocolError, protocol.CodeBadFrame, "MQTT: a second CONNECT")
	}
	if err := pk.ConnectDecode(rest); err != nil {
		return 0, nil, t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT CONNECT: %v", err)
	}
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return 0, nil, t.fail(code.Code, protocol.CodeBadFrame, "MQTT CONNECT: %s", code.Reason)
	}
	if pk.ProtocolVersion != 4 && pk.ProtocolVersion != 5 {
		t.version = pk.ProtocolVersion
		return 0, nil, t.fail(0x84, protocol.CodeUnsupportedProtocol, "MQTT protocol level %d is not served: 4 (3.1.1) or 5", pk.ProtocolVersion)
	}
	t.connected = true
	t.version, t.clean = pk.ProtocolVersion, pk.Connect.Clean
	t.keepalive = time.Duration(pk.Connect.Keepalive) * time.Second
	if t.version == 5 {
		t.receiveMax = 65535 // the default of MQTT 5 (3.3.4)
		if pk.Properties.ReceiveMaximum > 0 {
			t.receiveMax = int(pk.Properties.ReceiveMaximum)
		}
	}
	id := pk.Connect.ClientIdentifier
	if !protocol.ValidDevice(id) {
		return 0, nil, t.fail(rcBadClientID, protocol.CodeBadFrame, "MQTT client identifier %q is not a device id (1-128 of A-Z a-z 0-9 . _ : -)", id)
	}
	t.scratch = protocol.MustJSON(protocol.Hello{Protocol: 1, Device: id, Token: string(pk.Connect.Password)})
	return protocol.TypeHello, t.scratch, nil
}

func (t *mqttTransport) publish(pk *packets.Packet, rest []byte) (byte, []byte, error) {
	if err := pk.PublishDecode(rest); err != nil {
		return 0, nil, t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT PUBLISH: %v", err)
	}
	if code := pk.PublishValidate(0); code != packets.CodeSuccess {
		return 0, nil, t.fail(code.Code, protocol.CodeBadFrame, "MQTT PUBLISH: %s", code.Reason)
	}
	qos := pk.FixedHeader.Qos
	switch {
	case qos == 2:
		return 0, nil, t.fail(rcQoSUnsupported, protocol.CodeBadFrame, "MQTT: QoS 2 is not supported (CONNACK's Maximum QoS is 1)")
	case pk.FixedHeader.Retain && t.version == 5:
		return 0, nil, t.fail(rcRetainUnsupported, protocol.CodeBadFrame, "MQTT: retained messages are not supported")
	case !mqttTopicIs(pk.TopicName, t.device, mqttOutbox):
		if t.version == 5 && qos == 1 {
			t.out.write(func(dst []byte) []byte { return appendMQTTAck(dst, mqttPuback<<4, pk.PacketID, rcNotAuthorized) })
			return 0, nil, nil
		}
		return 0, nil, t.fail(rcNotAuthorized, protocol.CodeBadFrame, "MQTT: device %s may publish on %s only, not %s", t.device, MQTTOutboxTopic(t.device), pk.TopicName)
	}
	id, exact := mqttUserID(pk.Properties.User)
	t.mu.Lock()
	if !exact {
		// A retransmit (DUP) of a QoS 1 PUBLISH not yet PUBACKed here, or
		// of the latest one, is the same PUBLISH.
		var seen bool
		id, seen = t.unacked[pk.PacketID]
		if !seen && t.lastPid == pk.PacketID && t.lastID != 0 {
			id, seen = t.lastID, true
		}
		if !pk.FixedHeader.Dup || !seen || qos == 0 {
			id = t.pubNext
			t.pubNext++
		}
	}
	if qos == 1 {
		if t.unacked == nil {
			t.unacked = make(map[uint16]uint64)
		}
		t.unacked[pk.PacketID] = id
		t.lastPid, t.lastID = pk.PacketID, id
	}
	t.mu.Unlock()
	t.scratch = binary.BigEndian.AppendUint64(t.scratch[:0], id)
	return protocol.TypePublish, append(t.scratch, pk.Payload...), nil
}

// puback marks a delivered message acknowledged; the ACK moves over the
// acknowledged prefix only, as MQTT devices may acknowledge out of order.
func (t *mqttTransport) puback(pid uint16) (byte, []byte, error) {
	t.mu.Lock()
	for i := range t.inflight {
		if mqttPacketID(t.inflight[i].seq) == pid {
			t.inflight[i].acked = true
			break
		}
	}
	n := 0
	for n < len(t.inflight) && t.inflight[n].acked {
		n++
	}
	var upTo uint64
	if n > 0 {
		upTo = t.inflight[n-1].seq
		t.inflight = append(t.inflight[:0], t.inflight[n:]...)
	}
	t.mu.Unlock()
	if upTo == 0 {
		return 0, nil, nil
	}
	t.scratch = binary.BigEndian.AppendUint64(t.scratch[:0], upTo)
	return protocol.TypeAck, t.scratch, nil
}

// subscribe grants filters that match the device's inbox and no other
// device's topics; anything else is refused (5.0: 0x87, 3.1.1: 0x80).
func (t *mqttTransport) subscribe(pk *packets.Packet, rest []byte) error {
	if t.device == "" {
		return t.fail(rcProtocolError, protocol.CodeHelloRequired, "MQTT: SUBSCRIBE before CONNACK")
	}
	ack := packets.Packet{ProtocolVersion: t.version}
	var buf bytes.Buffer
	if pk.FixedHeader.Type == mqttUnsubscribe {
		if err := pk.UnsubscribeDecode(rest); err != nil {
			return t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT UNSUBSCRIBE: %v", err)
		}
		ack.FixedHeader.Type, ack.ReasonCodes = packets.Unsuback, make([]byte, len(pk.Filters)) // all success
		ack.PacketID = pk.PacketID
		_ = ack.UnsubackEncode(&buf)
	} else {
		if err := pk.SubscribeDecode(rest); err != nil {
			return t.fail(rcMalformed, protocol.CodeBadFrame, "MQTT SUBSCRIBE: %v", err)
		}
		refused := byte(0x80) // 3.1.1's only failure code
		if t.version == 5 {
			refused = rcNotAuthorized
		}
		ack.FixedHeader.Type, ack.PacketID = packets.Suback, pk.PacketID
		for _, f := range pk.Filters {
			code := min(f.Qos, 1)
			if !strings.HasPrefix(f.Filter, "devices/"+t.device+"/") || !mqttMatch(f.Filter, MQTTInboxTopic(t.device)) {
				code = refused
			}
			ack.ReasonCodes = append(ack.ReasonCodes, code)
		}
		_ = ack.SubackEncode(&buf)
	}
	t.out.write(func(dst []byte) []byte { return append(dst, buf.Bytes()...) })
	return nil
}

// mqttMatch reports whether the topic filter f matches topic.
func mqttMatch(f, topic string) bool {
	fs, ts := strings.Split(f, "/"), strings.Split(topic, "/")
	for i, p := range fs {
		switch {
		case p == "#":
			return true
		case i >= len(ts):
			return false
		case p != "+" && p != ts[i]:
			return false
		}
	}
	return len(fs) == len(ts)
}

// AppendFrame writes the session's frames as MQTT packets.
func (t *mqttTransport) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	switch typ {
	case protocol.TypeWelcome:
		var w protocol.Welcome
		_ = json.Unmarshal(body, &w)
		t.connacked = true
		dst = t.appendConnack(dst, w.Resumed && !t.clean, 0, []packets.UserProperty{{Key: "server", Val: w.Server},
			{Key: "session_epoch", Val: strconv.FormatUint(w.SessionEpoch, 10)},
			{Key: "last_publish_id", Val: strconv.FormatUint(w.LastPublishID, 10)}})
		return dst
	case protocol.TypePong:
		return append(dst, (mqttPingreq+1)<<4, 0) // PINGRESP
	case protocol.TypeError:
		var e protocol.ErrorBody
		_ = json.Unmarshal(body, &e)
		return t.appendRefusal(dst, t.reasonFor(e.Code), e.Message)
	case protocol.TypeGoAway:
		return t.appendRefusal(dst, rcShuttingDown, "server shutting down: reconnect to another")
	}
	return dst
}

// AppendSeqFrame writes a DELIVER as a QoS 1 PUBLISH and a PUBACK of the
// session as MQTT's (QoS 0 publishes have none).
func (t *mqttTransport) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	switch typ {
	case protocol.TypeDeliver:
		t.mu.Lock()
		t.inflight = append(t.inflight, mqttInflight{seq: n})
		t.mu.Unlock()
		// MQTT 5 devices also get the seq, as the user property "seq":
		// with it they tell a re-sent message from a new one exactly.
		var digits [20]byte
		seq := strconv.AppendUint(digits[:0], n, 10)
		props := 0
		if t.version == 5 {
			props = 1 + mqttSeqProp + len(seq)
		}
		flags := byte(1 << 1) // QoS 1
		if n <= t.dupThrough {
			flags |= 1 << 3 // DUP
		}
		topic := len(mqttTopicPrefix) + len(t.device) + len(mqttInbox)
		dst = protocol.AppendMQTTHeader(dst, mqttPublish<<4|flags, 2+topic+2+props+len(payload))
		dst = binary.BigEndian.AppendUint16(dst, uint16(topic))
		dst = append(append(append(dst, mqttTopicPrefix...), t.device...), mqttInbox...)
		dst = binary.BigEndian.AppendUint16(dst, mqttPacketID(n))
		if t.version == 5 {
			dst = append(dst, byte(mqttSeqProp+len(seq)), packets.PropUser, 0, 3, 's', 'e', 'q', 0, byte(len(seq)))
			dst = append(dst, seq...)
		}
		return append(dst, payload...)
	case protocol.TypePubAck:
		t.mu.Lock()
		defer t.mu.Unlock()
		for pid, id := range t.unacked { // a few at most: those in flight
			if id == n {
				delete(t.unacked, pid)
				return appendMQTTAck(dst, mqttPuback<<4, pid, 0)
			}
		}
		return dst
	}
	return dst
}

// mqttSeqProp is the size of the "seq" user property without its value:
// identifier, key, value length.
const mqttSeqProp = 1 + 2 + 3 + 2

// mqttUserID is the exact upstream id an MQTT 5 device may give its
// PUBLISH as the user property "id": retransmits on any connection are
// then recognised, as on the other transports.
func mqttUserID(props []packets.UserProperty) (uint64, bool) {
	for _, p := range props {
		if p.Key == "id" {
			id, err := strconv.ParseUint(p.Val, 10, 64)
			return id, err == nil && id > 0
		}
	}
	return 0, false
}

func appendMQTTAck(dst []byte, first byte, pid uint16, reason byte) []byte {
	if reason == 0 {
		return binary.BigEndian.AppendUint16(append(dst, first, 2), pid)
	}
	return append(binary.BigEndian.AppendUint16(append(dst, first, 4), pid), reason, 0)
}

// reasonFor is the MQTT 5 reason code of an ERROR: the one ReadFrame chose,
// or one for the protocol's code.
func (t *mqttTransport) reasonFor(code protocol.Code) byte {
	if t.failure != 0 {
		return t.failure
	}
	switch code {
	case protocol.CodeUnauthorized:
		return rcNotAuthorized
	case protocol.CodeServerFull:
		return rcServerBusy
	case protocol.CodeUnavailable:
		return rcServerUnavailable
	case protocol.CodeSessionTakenOver:
		return rcSessionTakenOver
	case protocol.CodeHeartbeatTimeout:
		return rcKeepAliveTimeout
	case protocol.CodeFrameTooLarge:
		return rcPacketTooLarge
	case protocol.CodeBadFrame:
		return rcMalformed
	}
	return rcUnspecified
}

// appendRefusal ends the connection in MQTT's words: before CONNACK a
// refusing CONNACK (when the device spoke a CONNECT), after it an MQTT 5
// DISCONNECT; a 3.1.1 connection is just closed.
func (t *mqttTransport) appendRefusal(dst []byte, reason byte, message string) []byte {
	switch {
	case !t.connected && t.version == 0:
		return dst // no CONNECT was understood
	case !t.connacked:
		if reason == rcShuttingDown {
			reason = rcUseAnotherServer
		}
		return t.appendConnack(dst, false, reason, nil)
	case t.version != 5:
		return dst
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5, ReasonCode: reason}
	pk.Properties.ReasonString = message
	var buf bytes.Buffer
	_ = pk.DisconnectEncode(&buf)
	return append(dst, buf.Bytes()...)
}

// appendConnack accepts (reason 0) or refuses the CONNECT. MQTT 5 devices
// learn the server's limits (QoS 1 at most, no retained messages, no
// wildcard or shared subscriptions, the heartbeat as their keepalive) and,
// as user properties, what the WELCOME says: server, session_epoch and
// last_publish_id.
func (t *mqttTransport) appendConnack(dst []byte, sessionPresent bool, reason byte, welcome []packets.UserProperty) []byte {
	if t.version != 5 {
		present := byte(0)
		if sessionPresent {
			present = 1
		}
		return append(dst, 2<<4, 2, present, connackCode(reason))
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: 5,
		SessionPresent: sessionPresent, ReasonCode: reason}
	if reason == 0 {
		p := &pk.Properties
		p.MaximumQos, p.MaximumQosFlag = 1, true
		p.RetainAvailable, p.RetainAvailableFlag = 0, true
		p.WildcardSubAvailable, p.WildcardSubAvailableFlag = 0, true
		p.SharedSubAvailable, p.SharedSubAvailableFlag = 0, true
		p.ServerKeepAlive, p.ServerKeepAliveFlag = uint16(t.heartbeat/time.Second), true
		p.User = welcome
	}
	var buf bytes.Buffer
	_ = pk.ConnackEncode(&buf)
	return append(dst, buf.Bytes()...)
}

// connackCode maps an MQTT 5 reason code onto 3.1.1's six CONNACK codes.
func connackCode(reason byte) byte {
	switch reason {
	case 0:
		return 0
	case 0x84:
		return 1 // unacceptable protocol version
	case rcBadClientID:
		return 2 // identifier rejected
	case rcNotAuthorized:
		return 5 // not authorized
	}
	return 3 // server unavailable
}
