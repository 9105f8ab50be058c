package protocol

import (
	"encoding/binary"
	"io"
)

// Codec reads and writes the frames of one connection; the two framings,
// TCP and WebSocket, differ only here.
type Codec interface {
	// ReadFrame returns the next frame (or TypeNone); body is valid until
	// the next call.
	ReadFrame() (typ byte, body []byte, err error)
	// Buffered reports whether more input is already read, so that a burst
	// of ACKs can be handled once, at its end.
	Buffered() bool
	// Release gives the read buffers back while nothing is buffered: an
	// idle connection then holds none. The next ReadFrame takes them again.
	Release()
	// SetMaxFrame changes the largest frame (type byte + body) accepted
	// from the next ReadFrame on: a server starts low and raises it once
	// the device is welcomed.
	SetMaxFrame(n int)
	AppendFrame(dst []byte, typ byte, body []byte) []byte
	AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte
}

// Reader is the TCP Codec: it decodes length-prefixed frames from a stream. It keeps a small window buffer
// (idle connections are the common case, so per-connection memory matters)
// and borrows pooled buffers only for frames that do not fit in it. The
// announced length is checked before any body byte is read or allocated,
// and a larger body's buffer grows as its bytes arrive.
type Reader struct {
	window
	max int
	big body
}

// NewReader returns a Reader that refuses frames longer than maxFrame
// (type byte + body) and buffers up to bufSize bytes.
func NewReader(rd io.Reader, maxFrame, bufSize int) *Reader {
	if bufSize < 16 {
		bufSize = 16
	}
	return &Reader{window: window{rd: rd, size: bufSize}, max: maxFrame}
}

// Buffered reports whether bytes are read from the stream but not yet returned.
func (r *Reader) Buffered() bool { return r.buffered() }

// Release implements Codec.
func (r *Reader) Release() {
	r.big.release()
	r.release()
}

// SetMaxFrame implements Codec.
func (r *Reader) SetMaxFrame(n int) { r.max = n }

// AppendFrame appends a length-prefixed frame.
func (r *Reader) AppendFrame(dst []byte, typ byte, body []byte) []byte {
	return AppendFrame(dst, typ, body)
}

// AppendSeqFrame appends a length-prefixed DELIVER, ACK, PUBLISH or PUBACK.
func (r *Reader) AppendSeqFrame(dst []byte, typ byte, n uint64, payload []byte) []byte {
	return AppendSeqFrame(dst, typ, n, payload)
}

// ReadFrame returns the next frame. body is valid until the next call.
// Errors are *Error (answer with ERROR and close) or the stream's own error.
func (r *Reader) ReadFrame() (typ byte, body []byte, err error) {
	r.big.release()
	if err := r.fill(HeaderSize); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(r.buf[r.r:]))
	if n == 0 {
		return 0, nil, Errorf(CodeBadFrame, "frame length is 0")
	}
	if n > r.max || n < 0 {
		return 0, nil, Errorf(CodeFrameTooLarge, "frame of %d bytes exceeds the limit of %d", n, r.max)
	}
	if err := r.fill(HeaderSize + 1); err != nil {
		return 0, nil, unexpected(err)
	}
	typ = r.buf[r.r+HeaderSize]
	if !KnownType(typ) {
		return 0, nil, Errorf(CodeBadFrame, "unknown frame type %s", TypeName(typ))
	}
	// A large frame's body grows only as its bytes arrive.
	body, err = r.payload(&r.big, HeaderSize+1, n-1)
	if err != nil {
		return 0, nil, err
	}
	return typ, body, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
