package protocol

import (
	"encoding/binary"
	"io"
	"sync/atomic"

	"github.com/gobwas/ws"
)

// WSReader is the WebSocket Codec: frames travel one per binary message
// (type byte + body, no length prefix). It serves both ends: it unmasks what
// is masked, joins fragments, hands control frames to onControl and refuses
// a message above the limit before reading it; it masks what it writes when
// it is the client's. Frames that break RFC 6455 (masking from the wrong
// side, RSV bits, reserved opcodes, fragmented or long control frames) are
// refused before their payload is read; ProtocolViolation then reports true.
type WSReader struct {
	in        window
	max       int
	buf       []byte
	big       body
	keep      int
	mask      bool
	onControl func(op ws.OpCode, payload []byte)
	violation atomic.Bool
}

// NewWSReader reads from rd through a window of keep bytes; onControl gets pings and pongs (payload valid
// during the call); a close frame ends the stream with io.EOF. Buffers up to
// keep bytes are reused between messages, larger ones are dropped so that
// idle connections stay small. mask is true on the client side.
func NewWSReader(rd io.Reader, maxFrame, keep int, mask bool, onControl func(ws.OpCode, []byte)) *WSReader {
	return &WSReader{in: window{rd: rd, size: max(keep, 16)}, max: maxFrame, keep: keep, mask: mask, onControl: onControl}
}

// Buffered reports whether more input is already read.
func (r *WSReader) Buffered() bool { return r.in.buffered() }

// Release implements Codec; the message buffer is dropped too.
func (r *WSReader) Release() {
	r.in.release()
	r.buf = nil
	r.big.release()
}

// SetMaxFrame implements Codec.
func (r *WSReader) SetMaxFrame(n int) { r.max = n }

// ProtocolViolation reports whether reading ended on a frame that breaks
// RFC 6455: the connection is to be closed with status 1002.
func (r *WSReader) ProtocolViolation() bool { return r.violation.Load() }

func (r *WSReader) violated(format string, args ...any) error {
	r.violation.Store(true)
	return Errorf(CodeBadFrame, "WebSocket protocol error: "+format, args...)
}

// AppendFrame appends a frame as one binary message.
func (r *WSReader) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	return AppendWSFrame(dst, typ, body, r.mask)
}

// AppendSeqFrame appends a DELIVER, ACK, PUBLISH or PUBACK as one binary message.
func (r *WSReader) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return AppendWSSeqFrame(dst, typ, n, payload, r.mask)
}

// ReadFrame returns the next frame; body is valid until the next call.
func (r *WSReader) ReadFrame() (byte, []byte, error) {
	r.big.release()
	msg := r.buf[:0]
	started := false
	for {
		h, err := r.readHeader()
		if err != nil {
			return 0, nil, err
		}
		if err := r.check(h); err != nil {
			return 0, nil, err
		}
		if h.OpCode.IsControl() {
			var p [125]byte
			if _, err := io.ReadFull(&r.in, p[:h.Length]); err != nil {
				return 0, nil, unexpected(err)
			}
			if h.Masked {
				ws.Cipher(p[:h.Length], h.Mask, 0)
			}
			if h.OpCode == ws.OpClose {
				return 0, nil, io.EOF
			}
			r.onControl(h.OpCode, p[:h.Length])
			continue
		}
		switch {
		case h.OpCode == ws.OpText:
			return 0, nil, Errorf(CodeBadFrame, "text messages are not frames; send binary messages")
		case h.OpCode == ws.OpBinary && started, h.OpCode == ws.OpContinuation && !started:
			return 0, nil, Errorf(CodeBadFrame, "broken WebSocket fragmentation")
		}
		started = true
		if int64(len(msg))+h.Length > int64(r.max) {
			return 0, nil, Errorf(CodeFrameTooLarge, "message of at least %d bytes exceeds the limit of %d", int64(len(msg))+h.Length, r.max)
		}
		n := len(msg)
		if msg, err = r.readPayload(msg, int(h.Length)); err != nil {
			return 0, nil, err
		}
		if h.Masked {
			ws.Cipher(msg[n:], h.Mask, 0)
		}
		if h.Fin {
			break
		}
	}
	if r.big.p == nil {
		if cap(msg) <= r.keep {
			r.buf = msg[:0]
		} else {
			r.buf = nil
		}
	}
	if len(msg) == 0 {
		return 0, nil, Errorf(CodeBadFrame, "frame length is 0")
	}
	if !KnownType(msg[0]) {
		return 0, nil, Errorf(CodeBadFrame, "unknown frame type %s", TypeName(msg[0]))
	}
	return msg[0], msg[1:], nil
}

// check refuses a frame header that RFC 6455 does not allow.
func (r *WSReader) check(h ws.Header) error {
	switch {
	case h.Rsv != 0:
		return r.violated("RSV bits %03b set without a negotiated extension", h.Rsv)
	case h.OpCode > ws.OpBinary && h.OpCode < ws.OpClose || h.OpCode > ws.OpPong:
		return r.violated("reserved opcode 0x%x", byte(h.OpCode))
	case h.Masked == r.mask && r.mask:
		return r.violated("masked frame from the server")
	case h.Masked == r.mask:
		return r.violated("unmasked frame from the client")
	case h.OpCode.IsControl() && !h.Fin:
		return r.violated("fragmented control frame")
	case h.OpCode.IsControl() && h.Length > 125:
		return r.violated("control frame payload of %d bytes exceeds 125", h.Length)
	}
	return nil
}

// readPayload appends n payload bytes to msg. A message that fits keep
// bytes is read into the reader's own small buffer; a larger one into a
// pooled buffer that grows as its bytes arrive, so that a header
// announcing a large message pins no more than what followed it.
func (r *WSReader) readPayload(msg []byte, n int) ([]byte, error) {
	end := len(msg) + n
	for len(msg) < end {
		if len(msg) == cap(msg) {
			if end <= r.keep && r.big.p == nil {
				nb := grow(msg, end-len(msg))
				msg = nb[:len(msg)]
			} else {
				msg = r.big.grow(msg, end)
			}
		}
		m, err := io.ReadFull(&r.in, msg[len(msg):min(cap(msg), end)])
		msg = msg[:len(msg)+m]
		if err != nil {
			return msg, unexpected(err)
		}
	}
	return msg, nil
}

// readHeader parses a frame header in place in the window (the reader's
// io.Reader path allocates per frame).
func (r *WSReader) readHeader() (ws.Header, error) {
	in := &r.in
	if err := in.fill(2); err != nil {
		return ws.Header{}, err
	}
	b0, b1 := in.buf[in.r], in.buf[in.r+1]
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	if err := in.fill(n); err != nil {
		return ws.Header{}, unexpected(err)
	}
	p := in.buf[in.r : in.r+n]
	in.r += n
	h := ws.Header{Fin: b0&0x80 != 0, Rsv: b0 >> 4 & 7, OpCode: ws.OpCode(b0 & 0x0f), Masked: b1&0x80 != 0}
	switch l := b1 & 0x7f; l {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(p[2:]))
	case 127:
		u := binary.BigEndian.Uint64(p[2:])
		if u > 1<<62 {
			return h, Errorf(CodeFrameTooLarge, "WebSocket length %d is not valid", u)
		}
		h.Length = int64(u)
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], p[n-4:])
	}
	return h, nil
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, max(len(b)+n, 2*cap(b)))
	copy(nb, b)
	return nb
}

// AppendWSHeader appends a final WebSocket frame header for n payload bytes.
// With mask (clients must mask) it appends a fresh mask and returns the
// offset where the payload starts, for MaskFrom; servers pass false.
func AppendWSHeader(dst []byte, op ws.OpCode, n int, mask bool) ([]byte, int) {
	dst = append(dst, 0x80|byte(op))
	var m byte
	if mask {
		m = 0x80
	}
	switch {
	case n < 126:
		dst = append(dst, m|byte(n))
	case n <= 0xFFFF:
		dst = binary.BigEndian.AppendUint16(append(dst, m|126), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint64(append(dst, m|127), uint64(n))
	}
	if mask {
		k := ws.NewMask()
		dst = append(dst, k[:]...)
	}
	return dst, len(dst)
}

// MaskFrom masks dst[start:] with the mask AppendWSHeader put before start.
func MaskFrom(dst []byte, start int) []byte {
	ws.Cipher(dst[start:], [4]byte(dst[start-4:start]), 0)
	return dst
}

// AppendWSFrame appends one protocol frame as a binary WebSocket message.
func AppendWSFrame(dst []byte, typ byte, body []byte, mask bool) []byte {
	dst, start := AppendWSHeader(dst, ws.OpBinary, 1+len(body), mask)
	dst = append(append(dst, typ), body...)
	if mask {
		dst = MaskFrom(dst, start)
	}
	return dst
}

// AppendWSSeqFrame is AppendSeqFrame as a binary WebSocket message.
func AppendWSSeqFrame(dst []byte, typ byte, n uint64, payload []byte, mask bool) []byte {
	dst, start := AppendWSHeader(dst, ws.OpBinary, 9+len(payload), mask)
	dst = binary.BigEndian.AppendUint64(append(dst, typ), n)
	dst = append(dst, payload...)
	if mask {
		dst = MaskFrom(dst, start)
	}
	return dst
}
