// Package protocol is the wire contract of socket protocol v1: frame types,
// the length-prefixed TCP framing, JSON bodies and error codes. It is shared
// by the server, the device client library and the load tool, so that both
// ends of every test speak the same bytes.
package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the only protocol version this package speaks.
const Version = 1

// Subprotocol is the WebSocket subprotocol name of v1.
const Subprotocol = "scp.v1"

// DefaultMaxFrameBytes is the default cap on length (type byte + body).
const DefaultMaxFrameBytes = 65536

// MaxFrameBeforeWelcome caps a frame (type byte + body) before WELCOME,
// whatever the configured limit: a connection not yet welcomed costs little.
const MaxFrameBeforeWelcome = 8192

// Frame types.
const (
	TypeHello   byte = 0x01
	TypeWelcome byte = 0x02
	TypePing    byte = 0x03
	TypePong    byte = 0x04
	TypeDeliver byte = 0x05
	TypeAck     byte = 0x06
	TypePublish byte = 0x07
	TypePubAck  byte = 0x08
	TypeGoAway  byte = 0x09
	TypeError   byte = 0x0A
)

// TypeNone is what a Codec's ReadFrame returns when it answered the input
// itself (MQTT's SUBSCRIBE) and has nothing more buffered: the read loop
// then applies a held ACK and may park, instead of blocking in a read.
const TypeNone byte = 0

// MaxPingBytes bounds a PING body.
const MaxPingBytes = 64

// HeaderSize is the TCP length prefix.
const HeaderSize = 4

// Code is an ERROR frame code.
type Code string

// ERROR codes of v1.
const (
	CodeBadFrame            Code = "bad_frame"
	CodeFrameTooLarge       Code = "frame_too_large"
	CodeHelloRequired       Code = "hello_required"
	CodeHelloTimeout        Code = "hello_timeout"
	CodeUnsupportedProtocol Code = "unsupported_protocol"
	CodeUnauthorized        Code = "unauthorized"
	CodeHeartbeatTimeout    Code = "heartbeat_timeout"
	CodeSessionTakenOver    Code = "session_taken_over"
	CodeUnavailable         Code = "unavailable"
	CodeServerFull          Code = "server_full"
	CodeInternal            Code = "internal"
)

// Codes lists every ERROR code, for metrics that want all series present.
var Codes = []Code{CodeBadFrame, CodeFrameTooLarge, CodeHelloRequired, CodeHelloTimeout,
	CodeUnsupportedProtocol, CodeUnauthorized, CodeHeartbeatTimeout, CodeSessionTakenOver,
	CodeUnavailable, CodeServerFull, CodeInternal}

// Error is a protocol violation to be answered with an ERROR frame.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf builds a protocol *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the ERROR code an error should be answered with.
func CodeOf(err error) Code {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return CodeInternal
}

// KnownType reports whether t is a frame type of v1.
func KnownType(t byte) bool { return t >= TypeHello && t <= TypeError }

// TypeName names a frame type for logs and errors.
func TypeName(t byte) string {
	names := [...]string{"", "HELLO", "WELCOME", "PING", "PONG", "DELIVER", "ACK", "PUBLISH", "PUBACK", "GOAWAY", "ERROR"}
	if KnownType(t) {
		return names[t]
	}
	return fmt.Sprintf("0x%02x", t)
}

// AppendFrame appends a TCP frame (length prefix, type, body) to dst.
func AppendFrame(dst []byte, typ byte, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+len(body)))
	dst = append(dst, typ)
	return append(dst, body...)
}

// AppendSeqFrame appends a TCP frame whose body is a uint64 followed by
// payload (DELIVER, PUBLISH) or nothing (ACK, PUBACK), without building the
// body separately.
func AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+8+len(payload)))
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint64(dst, n)
	return append(dst, payload...)
}

// ParseSeq splits a DELIVER or PUBLISH body into its number and payload.
func ParseSeq(body []byte) (uint64, []byte, error) {
	if len(body) < 8 {
		return 0, nil, Errorf(CodeBadFrame, "body of %d bytes is shorter than its 8-byte number", len(body))
	}
	return binary.BigEndian.Uint64(body), body[8:], nil
}

// ParseNumber parses an ACK or PUBACK body: exactly one uint64.
func ParseNumber(body []byte) (uint64, error) {
	if len(body) != 8 {
		return 0, Errorf(CodeBadFrame, "body must be exactly 8 bytes, got %d", len(body))
	}
	return binary.BigEndian.Uint64(body), nil
}

// ValidDevice reports whether s is 1–128 characters of [A-Za-z0-9._:-].
func ValidDevice(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}
