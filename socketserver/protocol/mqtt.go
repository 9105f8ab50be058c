package protocol

import "io"

// MQTTReader splits an MQTT 3.1.1 / 5.0 byte stream into control packets:
// the fixed header's first byte (type and flags) and the rest, whose length
// is the header's variable-length integer. What a packet means is up to
// the caller; this only frames, with the limits of every other reader: the
// announced length is checked before any of it is read or allocated, and a
// packet longer than the window grows as its bytes arrive.
type MQTTReader struct {
	window
	max int
	big body
}

// NewMQTTReader refuses packets whose remaining length exceeds maxPacket
// and buffers up to bufSize bytes.
func NewMQTTReader(rd io.Reader, maxPacket, bufSize int) *MQTTReader {
	return &MQTTReader{window: window{rd: rd, size: max(bufSize, 16)}, max: maxPacket}
}

// Buffered reports whether more input is already read.
func (r *MQTTReader) Buffered() bool { return r.buffered() }

// Release gives the buffers back while nothing is buffered.
func (r *MQTTReader) Release() {
	r.big.release()
	r.release()
}

// SetMaxPacket changes the largest remaining length accepted from the next
// packet on.
func (r *MQTTReader) SetMaxPacket(n int) { r.max = n }

// ReadPacket returns the next packet's first byte and its remaining bytes
// (valid until the next call). Errors are *Error or the stream's own.
func (r *MQTTReader) ReadPacket() (first byte, rest []byte, err error) {
	r.big.release()
	if err := r.fill(2); err != nil {
		return 0, nil, err
	}
	first = r.buf[r.r]
	// The remaining length: 7 bits a byte, least significant first, at
	// most four bytes (MQTT 3.1.1 2.2.3, 5.0 1.5.5).
	n, size := 0, 1
	for {
		if size > 4 {
			return 0, nil, Errorf(CodeBadFrame, "MQTT remaining length longer than four bytes")
		}
		if err := r.fill(1 + size); err != nil {
			return 0, nil, unexpected(err)
		}
		b := r.buf[r.r+size]
		n |= int(b&0x7f) << (7 * (size - 1))
		size++
		if b&0x80 == 0 {
			break
		}
	}
	if n > r.max {
		return 0, nil, Errorf(CodeFrameTooLarge, "MQTT packet of %d bytes exceeds the limit of %d", n, r.max)
	}
	if rest, err = r.payload(&r.big, size, n); err != nil {
		return 0, nil, err
	}
	return first, rest, nil
}

// AppendMQTTHeader appends a fixed header: the first byte and the
// remaining length n.
func AppendMQTTHeader(dst []byte, first byte, n int) []byte {
	dst = append(dst, first)
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			return dst
		}
	}
}
