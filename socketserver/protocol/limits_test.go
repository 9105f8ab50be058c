package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/gobwas/ws"
)

var errStall = errors.New("stalled")

// stalling returns input, then errStall: a peer that announced a frame and
// sent only its first bytes.
func stalling(input []byte) io.Reader {
	return io.MultiReader(bytes.NewReader(input), iotest.ErrReader(errStall))
}

func tcpHeader(n int, typ byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(n)), typ)
}

func wsHeader(n int) []byte {
	h, _ := AppendWSHeader(nil, ws.OpBinary, n, true)
	return h
}

// A header that announces a 4 MiB frame, followed by 10 bytes of it, costs
// about what arrived, not what was announced.
func TestAnnouncedBodyIsNotAllocated(t *testing.T) {
	const announced = 4 << 20
	some := bytes.Repeat([]byte{7}, 10)
	for name, codec := range map[string]func() Codec{
		"tcp": func() Codec {
			return NewReader(stalling(append(tcpHeader(announced, TypePublish), some...)), announced, 512)
		},
		"websocket": func() Codec {
			return NewWSReader(stalling(append(wsHeader(announced), some...)), announced, 512, false, nil)
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := codec()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := c.ReadFrame()
			runtime.ReadMemStats(&after)
			if !errors.Is(err, errStall) {
				t.Fatalf("got %v, want the stream's error", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
				t.Fatalf("allocated %d bytes for 10 bytes of an announced %d-byte frame", grew, announced)
			}
		})
	}
}

func held(c Codec) int {
	var b *body
	switch r := c.(type) {
	case *Reader:
		b = &r.big
	case *WSReader:
		b = &r.big
	}
	if b.p == nil {
		return 0
	}
	return cap(*b.p)
}

// The body's buffer grows with what arrived: never more than twice that,
// or the smallest class.
func TestBodyBufferGrowsWithArrivals(t *testing.T) {
	const announced = 1 << 20
	for _, k := range []int{10, 600, 1024, 1500, 5000, 70000, 300000} {
		some := bytes.Repeat([]byte{7}, k)
		for name, c := range map[string]Codec{
			"tcp":       NewReader(iotest.HalfReader(stalling(append(tcpHeader(announced, TypePublish), some...))), announced, 512),
			"websocket": NewWSReader(iotest.HalfReader(stalling(append(wsHeader(announced), some...))), announced, 512, false, nil),
		} {
			t.Run(fmt.Sprintf("%s/%d", name, k), func(t *testing.T) {
				if _, _, err := c.ReadFrame(); !errors.Is(err, errStall) {
					t.Fatalf("got %v, want the stream's error", err)
				}
				if h := held(c); h > max(2*k, minClass) {
					t.Fatalf("holds %d bytes after %d arrived", h, k)
				}
			})
		}
	}
}

// Bodies larger than every pooled class arrive whole, in pieces or not.
func TestLargeBodiesInPieces(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 300000/16)
	for name, src := range map[string]func([]byte) io.Reader{
		"whole":        func(b []byte) io.Reader { return bytes.NewReader(b) },
		"half-reads":   func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"byte-by-byte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
	} {
		t.Run(name, func(t *testing.T) {
			tcp := frames(t, append([]byte{TypePublish}, big...), []byte{TypePing}, append([]byte{TypePublish}, big[:5000]...))
			wsStream := AppendWSFrame(nil, TypePublish, big, true)
			wsStream = AppendWSFrame(wsStream, TypePing, nil, true)
			wsStream = AppendWSFrame(wsStream, TypePublish, big[:5000], true)
			for codec, c := range map[string]Codec{
				"tcp":       NewReader(src(tcp), 1<<20, 512),
				"websocket": NewWSReader(src(wsStream), 1<<20, 512, false, nil),
			} {
				for i, want := range [][]byte{big, nil, big[:5000]} {
					typ, body, err := c.ReadFrame()
					if err != nil || !bytes.Equal(body, want) || (want == nil) != (typ == TypePing) {
						t.Fatalf("%s frame %d: type %d, %d bytes, %v", codec, i, typ, len(body), err)
					}
				}
			}
		})
	}
}

// The limit can change between frames: a server starts low and raises it
// once the device is welcomed.
func TestSetMaxFrame(t *testing.T) {
	small := bytes.Repeat([]byte{1}, MaxFrameBeforeWelcome-1)
	large := bytes.Repeat([]byte{2}, 100000)
	cases := map[string]struct {
		stream, over []byte
		codec        func(io.Reader) Codec
	}{
		"tcp": {
			frames(t, append([]byte{TypePublish}, small...), append([]byte{TypePublish}, large...)),
			tcpHeader(MaxFrameBeforeWelcome+1, TypePublish),
			func(r io.Reader) Codec { return NewReader(r, MaxFrameBeforeWelcome, 512) },
		},
		"websocket": {
			AppendWSFrame(AppendWSFrame(nil, TypePublish, small, true), TypePublish, large, true),
			wsHeader(MaxFrameBeforeWelcome + 1),
			func(r io.Reader) Codec { return NewWSReader(r, MaxFrameBeforeWelcome, 512, false, nil) },
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := tc.codec(bytes.NewReader(tc.stream))
			if _, body, err := c.ReadFrame(); err != nil || len(body) != len(small) {
				t.Fatalf("frame at the limit: %d bytes, %v", len(body), err)
			}
			c.SetMaxFrame(1 << 20)
			if _, body, err := c.ReadFrame(); err != nil || len(body) != len(large) {
				t.Fatalf("frame after raising the limit: %d bytes, %v", len(body), err)
			}
			// One byte over: refused, and not a byte of the body is read.
			src := &countingReader{r: io.MultiReader(bytes.NewReader(tc.over), neverEnding{}), limit: len(tc.over), t: t}
			if _, _, err := tc.codec(iotest.OneByteReader(src)).ReadFrame(); CodeOf(err) != CodeFrameTooLarge {
				t.Fatalf("one byte over the limit: %v, want frame_too_large", err)
			}
		})
	}
}

// Client frames that break RFC 6455 are refused from their header, before
// their payload is read, and mark the connection for a 1002 close.
func TestWSProtocolViolations(t *testing.T) {
	mask := []byte{1, 2, 3, 4}
	masked := func(b0 byte, payload int) []byte {
		h := []byte{b0, 0x80 | byte(payload)}
		return append(h, mask...)
	}
	cases := map[string][]byte{
		"unmasked":               {0x82, 0x01},
		"rsv1":                   masked(0xC2, 1),
		"rsv2":                   masked(0xA2, 1),
		"rsv3":                   masked(0x92, 1),
		"fragmented ping":        masked(0x09, 1),
		"fragmented pong":        masked(0x0A, 1),
		"fragmented close":       masked(0x08, 2),
		"control of 126 bytes":   append([]byte{0x89, 0x80 | 126, 0, 126}, mask...),
		"unmasked ping":          {0x89, 0x01},
		"rsv on a continuation":  masked(0x40, 1),
		"reserved and unmasked":  {0x83, 0x01},
		"unmasked close, no fin": {0x08, 0x00},
	}
	for _, op := range []byte{0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cases[fmt.Sprintf("reserved opcode 0x%X", op)] = masked(0x80|op, 1)
	}
	for name, hdr := range cases {
		t.Run(name, func(t *testing.T) {
			src := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), neverEnding{}), limit: len(hdr), t: t}
			r := NewWSReader(iotest.OneByteReader(src), 1024, 512, false, func(ws.OpCode, []byte) { t.Fatal("control frame handled") })
			_, _, err := r.ReadFrame()
			if CodeOf(err) != CodeBadFrame || !r.ProtocolViolation() {
				t.Fatalf("got %v (violation %v), want bad_frame and a protocol violation", err, r.ProtocolViolation())
			}
		})
	}
	t.Run("masked frame from the server", func(t *testing.T) {
		r := NewWSReader(bytes.NewReader(AppendWSFrame(nil, TypePing, nil, true)), 1024, 512, true, nil)
		if _, _, err := r.ReadFrame(); CodeOf(err) != CodeBadFrame || !r.ProtocolViolation() {
			t.Fatalf("client side got %v, want a protocol violation", err)
		}
	})
	t.Run("valid frames are no violation", func(t *testing.T) {
		var pings int
		stream, _ := AppendWSHeader(nil, ws.OpPing, 2, true)
		stream = MaskFrom(append(stream, "hi"...), len(stream))
		stream = AppendWSFrame(stream, TypePing, []byte("x"), true)
		r := NewWSReader(bytes.NewReader(stream), 1024, 512, false, func(op ws.OpCode, p []byte) { pings++ })
		if typ, body, err := r.ReadFrame(); err != nil || typ != TypePing || string(body) != "x" || pings != 1 || r.ProtocolViolation() {
			t.Fatalf("got %d %q %v, %d pings, violation %v", typ, body, err, pings, r.ProtocolViolation())
		}
		if _, _, err := r.ReadFrame(); err != io.EOF || r.ProtocolViolation() {
			t.Fatalf("end of stream: %v, violation %v", err, r.ProtocolViolation())
		}
	})
}

// Large frames in steady traffic reuse pooled buffers.
func BenchmarkReadLargeFrame(b *testing.B) {
	one := AppendSeqFrame(nil, TypePublish, 42, bytes.Repeat([]byte("p"), 20000))
	stream := bytes.Repeat(one, 100)
	src := bytes.NewReader(stream)
	r := NewReader(src, DefaultMaxFrameBytes, 512)
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := r.ReadFrame(); err != nil {
			src.Reset(stream)
			if _, _, err := r.ReadFrame(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
