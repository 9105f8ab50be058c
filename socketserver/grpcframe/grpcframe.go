// Package grpcframe maps protocol v1 frames (type byte + body, as on TCP)
// to the messages of scp.v1.Device and back, in one place for the server
// and the clients. The mapping is the table in docs/protocol.md (gRPC).
package grpcframe

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/scpv1"
)

// FromClient is the frame of a ClientFrame. An ACK's body is written into
// num, so that a burst of ACKs allocates nothing. A HELLO's JSON carries
// protocol 0 when the message did (unsupported_protocol, as on TCP).
func FromClient(m *scpv1.ClientFrame, num *[8]byte) (typ byte, body []byte, err error) {
	switch f := m.GetFrame().(type) {
	case *scpv1.ClientFrame_Hello:
		h := f.Hello
		return protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: int(h.GetProtocol()),
			Device: h.GetDevice(), Token: h.GetToken(), LastSeq: h.GetLastSeq()}), nil
	case *scpv1.ClientFrame_Ping:
		return protocol.TypePing, f.Ping.GetData(), nil
	case *scpv1.ClientFrame_Pong:
		return protocol.TypePong, f.Pong.GetData(), nil
	case *scpv1.ClientFrame_Ack:
		binary.BigEndian.PutUint64(num[:], f.Ack.GetSeq())
		return protocol.TypeAck, num[:], nil
	case *scpv1.ClientFrame_Publish:
		body = binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(f.Publish.GetPayload())), f.Publish.GetId())
		return protocol.TypePublish, append(body, f.Publish.GetPayload()...), nil
	}
	return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "ClientFrame carries no frame this server knows")
}

// Client is the ClientFrame of a frame a device sends.
func Client(typ byte, body []byte) (*scpv1.ClientFrame, error) {
	switch typ {
	case protocol.TypeHello:
		var h protocol.Hello
		if err := protocol.ParseJSON(body, &h); err != nil {
			return nil, err
		}
		return &scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Hello{Hello: &scpv1.Hello{Protocol: uint32(h.Protocol),
			Device: h.Device, Token: h.Token, LastSeq: h.LastSeq}}}, nil
	case protocol.TypePing:
		return &scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Ping{Ping: &scpv1.Ping{Data: body}}}, nil
	case protocol.TypePong:
		return &scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Pong{Pong: &scpv1.Pong{Data: body}}}, nil
	case protocol.TypeAck:
		seq, err := protocol.ParseNumber(body)
		if err != nil {
			return nil, err
		}
		return &scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Ack{Ack: &scpv1.Ack{Seq: seq}}}, nil
	case protocol.TypePublish:
		id, payload, err := protocol.ParseSeq(body)
		if err != nil {
			return nil, err
		}
		return &scpv1.ClientFrame{Frame: &scpv1.ClientFrame_Publish{Publish: &scpv1.Publish{Id: id, Payload: payload}}}, nil
	}
	return nil, fmt.Errorf("%s is not sent by devices", protocol.TypeName(typ))
}

// Server is the ServerFrame of a frame the server sends.
func Server(typ byte, body []byte) (*scpv1.ServerFrame, error) {
	switch typ {
	case protocol.TypeWelcome:
		var w protocol.Welcome
		if err := protocol.ParseJSON(body, &w); err != nil {
			return nil, err
		}
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Welcome{Welcome: &scpv1.Welcome{Server: w.Server,
			SessionEpoch: w.SessionEpoch, Resumed: w.Resumed, HeartbeatMs: w.HeartbeatMs,
			LastPublishId: w.LastPublishID, State: string(w.State)}}}, nil
	case protocol.TypePing:
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Ping{Ping: &scpv1.Ping{Data: body}}}, nil
	case protocol.TypePong:
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Pong{Pong: &scpv1.Pong{Data: body}}}, nil
	case protocol.TypeDeliver:
		seq, payload, err := protocol.ParseSeq(body)
		if err != nil {
			return nil, err
		}
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Deliver{Deliver: &scpv1.Deliver{Seq: seq, Payload: payload}}}, nil
	case protocol.TypePubAck:
		id, err := protocol.ParseNumber(body)
		if err != nil {
			return nil, err
		}
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Puback{Puback: &scpv1.PubAck{Id: id}}}, nil
	case protocol.TypeGoAway:
		var g protocol.GoAway
		if err := protocol.ParseJSON(body, &g); err != nil {
			return nil, err
		}
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Goaway{Goaway: &scpv1.GoAway{Reason: g.Reason,
			ReconnectAfterMs: g.ReconnectAfterMs}}}, nil
	case protocol.TypeError:
		var e protocol.ErrorBody
		if err := protocol.ParseJSON(body, &e); err != nil {
			return nil, err
		}
		return &scpv1.ServerFrame{Frame: &scpv1.ServerFrame_Error{Error: &scpv1.Error{Code: string(e.Code),
			Message: e.Message, RetryAfterMs: e.RetryAfterMs}}}, nil
	}
	return nil, fmt.Errorf("%s is not sent by servers", protocol.TypeName(typ))
}

// FromServer is the frame of a ServerFrame, its body as on TCP.
func FromServer(m *scpv1.ServerFrame) (typ byte, body []byte, err error) {
	switch f := m.GetFrame().(type) {
	case *scpv1.ServerFrame_Welcome:
		w := f.Welcome
		state := json.RawMessage(w.GetState())
		if len(state) == 0 {
			state = json.RawMessage("{}")
		}
		return protocol.TypeWelcome, protocol.MustJSON(protocol.Welcome{Server: w.GetServer(),
			SessionEpoch: w.GetSessionEpoch(), Resumed: w.GetResumed(), HeartbeatMs: w.GetHeartbeatMs(),
			LastPublishID: w.GetLastPublishId(), State: state}), nil
	case *scpv1.ServerFrame_Ping:
		return protocol.TypePing, f.Ping.GetData(), nil
	case *scpv1.ServerFrame_Pong:
		return protocol.TypePong, f.Pong.GetData(), nil
	case *scpv1.ServerFrame_Deliver:
		body = binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(f.Deliver.GetPayload())), f.Deliver.GetSeq())
		return protocol.TypeDeliver, append(body, f.Deliver.GetPayload()...), nil
	case *scpv1.ServerFrame_Puback:
		return protocol.TypePubAck, binary.BigEndian.AppendUint64(nil, f.Puback.GetId()), nil
	case *scpv1.ServerFrame_Goaway:
		g := f.Goaway
		return protocol.TypeGoAway, protocol.MustJSON(protocol.GoAway{Reason: g.GetReason(),
			ReconnectAfterMs: g.GetReconnectAfterMs()}), nil
	case *scpv1.ServerFrame_Error:
		e := f.Error
		return protocol.TypeError, protocol.MustJSON(protocol.ErrorBody{Code: protocol.Code(e.GetCode()),
			Message: e.GetMessage(), RetryAfterMs: e.GetRetryAfterMs()}), nil
	}
	return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "ServerFrame carries no frame this client knows")
}

// Each calls send with the type and body of each length-prefixed frame of
// b (a writer's output, encoded as on TCP) and returns the bytes of the
// frames sent. The server's and the client's stand-ins for a socket turn
// a Write into messages with it.
func Each(b []byte, send func(typ byte, body []byte) error) (int, error) {
	n := 0
	for len(b) >= protocol.HeaderSize+1 {
		size := int(binary.BigEndian.Uint32(b))
		if size < 1 || len(b) < protocol.HeaderSize+size {
			return n, fmt.Errorf("grpcframe: truncated frame (%d of %d bytes)", len(b)-protocol.HeaderSize, size)
		}
		if err := send(b[protocol.HeaderSize], b[protocol.HeaderSize+1:protocol.HeaderSize+size]); err != nil {
			return n, err
		}
		b = b[protocol.HeaderSize+size:]
		n += protocol.HeaderSize + size
	}
	return n, nil
}

// AppendDeliver appends the ServerFrame of a DELIVER as proto.Marshal
// encodes it, without building the message: the server's hot path.
func AppendDeliver(dst []byte, seq uint64, payload []byte) []byte {
	n := 0
	if seq != 0 {
		n += protowire.SizeTag(1) + protowire.SizeVarint(seq)
	}
	if len(payload) > 0 {
		n += protowire.SizeTag(2) + protowire.SizeBytes(len(payload))
	}
	dst = protowire.AppendTag(dst, 5, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	if seq != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, seq)
	}
	if len(payload) > 0 {
		dst = protowire.AppendTag(dst, 2, protowire.BytesType)
		dst = protowire.AppendBytes(dst, payload)
	}
	return dst
}
