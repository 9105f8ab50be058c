package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func mqttPacket(first byte, rest []byte) []byte {
	return append(AppendMQTTHeader(nil, first, len(rest)), rest...)
}

func TestMQTTReaderSplitsPackets(t *testing.T) {
	big := bytes.Repeat([]byte{7}, 20000) // three-byte length, beyond the window
	in := bytes.Join([][]byte{
		mqttPacket(0xC0, nil), // PINGREQ
		mqttPacket(0x32, []byte("abc")),
		mqttPacket(0x30, big),
		mqttPacket(0xE0, nil), // DISCONNECT
	}, nil)
	r := NewMQTTReader(iotest.OneByteReader(bytes.NewReader(in)), 1<<20, 64)
	for i, want := range []struct {
		first byte
		rest  []byte
	}{{0xC0, nil}, {0x32, []byte("abc")}, {0x30, big}, {0xE0, nil}} {
		first, rest, err := r.ReadPacket()
		if err != nil || first != want.first || !bytes.Equal(rest, want.rest) {
			t.Fatalf("packet %d: %#x, %d bytes, %v", i, first, len(rest), err)
		}
	}
	if _, _, err := r.ReadPacket(); err != io.EOF {
		t.Fatalf("after the last packet: %v, want EOF", err)
	}
}

func TestMQTTHeaderLengths(t *testing.T) {
	for n, want := range map[int][]byte{0: {0x30, 0}, 127: {0x30, 0x7f}, 128: {0x30, 0x80, 1}, 16383: {0x30, 0xff, 0x7f},
		16384: {0x30, 0x80, 0x80, 1}, 268435455: {0x30, 0xff, 0xff, 0xff, 0x7f}} {
		if got := AppendMQTTHeader(nil, 0x30, n); !bytes.Equal(got, want) {
			t.Fatalf("length %d encoded as %x, want %x", n, got, want)
		}
	}
}

// failAfter fails any read beyond the first n bytes: the reader must not
// need them to refuse a packet.
type failAfter struct {
	r io.Reader
	n int
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("read beyond the header")
	}
	p = p[:min(len(p), f.n)]
	m, err := f.r.Read(p)
	f.n -= m
	return m, err
}

func TestMQTTReaderRefusesBeforeReading(t *testing.T) {
	for name, c := range map[string]struct {
		in   []byte
		code Code
	}{
		"over the limit":      {AppendMQTTHeader(nil, 0x30, 268435455), CodeFrameTooLarge},
		"five length bytes":   {[]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, CodeBadFrame},
		"just over the limit": {AppendMQTTHeader(nil, 0x30, 1025), CodeFrameTooLarge},
	} {
		head := len(c.in)
		r := NewMQTTReader(&failAfter{bytes.NewReader(append(c.in, make([]byte, 64)...)), head}, 1024, 16)
		_, _, err := r.ReadPacket()
		if CodeOf(err) != c.code {
			t.Fatalf("%s: %v, want %s", name, err, c.code)
		}
	}
}

func FuzzMQTTReader(f *testing.F) {
	f.Add(mqttPacket(0x10, []byte("\x00\x04MQTT\x04\x02\x00\x3c\x00\x01d")))
	f.Add([]byte{0xC0, 0x00, 0xE0, 0x00})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add(AppendMQTTHeader(nil, 0x30, 4000))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 2048
		r := NewMQTTReader(iotest.HalfReader(bytes.NewReader(data)), max, 64)
		consumed := 0
		for {
			_, rest, err := r.ReadPacket()
			if err != nil {
				var pe *Error
				if !errors.As(err, &pe) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %T %v", err, err)
				}
				return
			}
			if len(rest) > max {
				t.Fatalf("accepted %d bytes over the limit %d", len(rest), max)
			}
			consumed += 2 + len(rest)
			if consumed > len(data) {
				t.Fatalf("returned more bytes than the input had")
			}
		}
	})
}
