package protocol

import (
	"encoding/binary"
	"io"
)

// HTTP/2 framing (RFC 9113, section 4), for the gRPC listener's devices:
// like the TCP and MQTT readers, an H2Reader keeps a small window that an
// idle connection gives back, and a frame's declared length is checked
// before any of its bytes are read.

// H2Preface is what every HTTP/2 client sends first.
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Frame types and flags.
const (
	H2Data         = 0x0
	H2Headers      = 0x1
	H2RSTStream    = 0x3
	H2Settings     = 0x4
	H2Ping         = 0x6
	H2GoAway       = 0x7
	H2WindowUpdate = 0x8
	H2Continuation = 0x9

	H2FlagEndStream  = 0x1
	H2FlagAck        = 0x1
	H2FlagEndHeaders = 0x4
	H2FlagPadded     = 0x8
	H2FlagPriority   = 0x20
)

// Settings and error codes the server uses.
const (
	H2SettingInitialWindowSize    = 0x4
	H2SettingMaxConcurrentStreams = 0x3

	H2NoError          = 0x0
	H2ProtocolError    = 0x1
	H2FlowControlError = 0x3
	H2FrameSizeError   = 0x6
	H2EnhanceYourCalm  = 0xb
)

// H2MaxFrame is the largest frame payload either side may send: the
// default SETTINGS_MAX_FRAME_SIZE, which the server never raises.
const H2MaxFrame = 16384

// H2DefaultWindow is the initial flow-control window of RFC 9113.
const H2DefaultWindow = 65535

// H2HeaderLen is the size of a frame header.
const H2HeaderLen = 9

// H2Frame is a frame's header and payload (valid until the next read).
type H2Frame struct {
	Type, Flags byte
	Stream      uint32
	Payload     []byte
}

// ParseH2Header reads a frame header: payload length, type, flags, stream.
func ParseH2Header(h []byte) (n int, typ, flags byte, stream uint32) {
	return int(h[0])<<16 | int(h[1])<<8 | int(h[2]), h[3], h[4], binary.BigEndian.Uint32(h[5:9]) & 0x7fffffff
}

// AppendH2Header appends a frame header for a payload of n bytes.
func AppendH2Header(dst []byte, n int, typ, flags byte, stream uint32) []byte {
	dst = append(dst, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	return binary.BigEndian.AppendUint32(dst, stream)
}

// H2Unpad strips the padding of a DATA or HEADERS payload (flags are the
// frame's).
func H2Unpad(flags byte, p []byte) ([]byte, error) {
	if flags&H2FlagPadded == 0 {
		return p, nil
	}
	if len(p) == 0 || int(p[0]) >= len(p) {
		return nil, Errorf(CodeBadFrame, "HTTP/2 frame with bad padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}

// H2InitialWindow is the SETTINGS_INITIAL_WINDOW_SIZE of a SETTINGS
// payload, the last if several; ok is false when it has none.
func H2InitialWindow(p []byte) (v int64, ok bool, err error) {
	if len(p)%6 != 0 {
		return 0, false, Errorf(CodeBadFrame, "HTTP/2 SETTINGS of %d bytes", len(p))
	}
	for i := 0; i < len(p); i += 6 {
		if binary.BigEndian.Uint16(p[i:]) == H2SettingInitialWindowSize {
			v, ok = int64(binary.BigEndian.Uint32(p[i+2:])), true
		}
	}
	return v, ok, nil
}

// H2Reader reads HTTP/2 frames from a stream.
type H2Reader struct {
	window
	big body
}

// NewH2Reader returns a reader with a window of bufSize bytes.
func NewH2Reader(rd io.Reader, bufSize int) *H2Reader {
	return &H2Reader{window: window{rd: rd, size: max(bufSize, 16)}}
}

// Buffered reports whether read bytes wait to be returned.
func (r *H2Reader) Buffered() bool { return r.buffered() }

// Release gives the buffers back while nothing is buffered.
func (r *H2Reader) Release() {
	r.big.release()
	r.release()
}

// ReadFrame returns the next frame. A payload above H2MaxFrame is an
// *Error (frame_too_large) before any of it is read.
func (r *H2Reader) ReadFrame() (H2Frame, error) {
	r.big.release()
	if err := r.fill(H2HeaderLen); err != nil {
		return H2Frame{}, err
	}
	n, typ, flags, stream := ParseH2Header(r.buf[r.r:])
	f := H2Frame{Type: typ, Flags: flags, Stream: stream}
	if n > H2MaxFrame {
		return f, Errorf(CodeFrameTooLarge, "HTTP/2 frame of %d bytes exceeds SETTINGS_MAX_FRAME_SIZE %d", n, H2MaxFrame)
	}
	p, err := r.payload(&r.big, H2HeaderLen, n)
	if err != nil {
		return f, err
	}
	f.Payload = p
	return f, nil
}

// AppendHPACKLiteral appends a header field as an HPACK literal without
// indexing (RFC 7541, 6.2.2), so that the peer's dynamic table is not
// touched and the server keeps no encoder state.
func AppendHPACKLiteral(dst []byte, name, value string) []byte {
	dst = append(dst, 0)
	return appendHPACKString(appendHPACKString(dst, name), value)
}

// appendHPACKString appends a string literal without Huffman coding.
func appendHPACKString(dst []byte, s string) []byte {
	n := len(s)
	if n < 127 {
		dst = append(dst, byte(n))
	} else {
		dst = append(dst, 127)
		for n -= 127; n >= 128; n >>= 7 {
			dst = append(dst, byte(n&0x7f|0x80))
		}
		dst = append(dst, byte(n))
	}
	return append(dst, s...)
}
