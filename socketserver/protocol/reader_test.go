package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/gobwas/ws"
)

func frames(t testing.TB, fs ...[]byte) []byte {
	var b []byte
	for _, f := range fs {
		b = AppendFrame(b, f[0], f[1:])
	}
	return b
}

func readAll(t *testing.T, r *Reader) (types []byte, bodies []string, err error) {
	for {
		typ, body, err := r.ReadFrame()
		if err != nil {
			return types, bodies, err
		}
		types = append(types, typ)
		bodies = append(bodies, string(body))
	}
}

func TestReaderSplitAndCoalesced(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3000) // larger than the window: pooled path
	stream := frames(t, append([]byte{TypePing}, "ab"...), append([]byte{TypePublish}, big...),
		[]byte{TypeAck, 0, 0, 0, 0, 0, 0, 0, 7}, []byte{TypePing})
	for name, src := range map[string]io.Reader{
		"coalesced":    bytes.NewReader(stream),
		"byte-by-byte": iotest.OneByteReader(bytes.NewReader(stream)),
		"half-reads":   iotest.HalfReader(bytes.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			types, bodies, err := readAll(t, NewReader(src, DefaultMaxFrameBytes, 64))
			if err != io.EOF {
				t.Fatalf("end of stream: got %v, want io.EOF", err)
			}
			want := []byte{TypePing, TypePublish, TypeAck, TypePing}
			if !bytes.Equal(types, want) {
				t.Fatalf("types %v, want %v", types, want)
			}
			if bodies[0] != "ab" || bodies[1] != string(big) || bodies[3] != "" {
				t.Fatalf("bodies not preserved: %q %d %q", bodies[0], len(bodies[1]), bodies[3])
			}
		})
	}
}

// countingReader fails the test if more than limit bytes are read.
type countingReader struct {
	r     io.Reader
	n     int
	limit int
	t     *testing.T
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if c.n > c.limit {
		c.t.Fatalf("reader consumed %d bytes, more than the %d it needed", c.n, c.limit)
	}
	return n, err
}

func TestReaderRefusesOversizedWithoutReadingBody(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, 0xFFFFFFF0) // announces ~4 GiB
	src := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), neverEnding{}), limit: 1 << 20, t: t}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := NewReader(iotest.OneByteReader(src), 1024, 64).ReadFrame()
	runtime.ReadMemStats(&after)
	if CodeOf(err) != CodeFrameTooLarge {
		t.Fatalf("got %v, want frame_too_large", err)
	}
	if src.n > 4 {
		t.Fatalf("read %d bytes; only the 4-byte header may be read", src.n)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Fatalf("allocated %d bytes refusing an oversized frame", grew)
	}
}

type neverEnding struct{}

func (neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

func TestReaderErrors(t *testing.T) {
	cases := []struct {
		name  string
		input []byte
		code  Code
		err   error
	}{
		{"length zero", []byte{0, 0, 0, 0}, CodeBadFrame, nil},
		{"unknown type", []byte{0, 0, 0, 1, 0x42}, CodeBadFrame, nil},
		{"type zero", []byte{0, 0, 0, 1, 0x00}, CodeBadFrame, nil},
		{"too large by one", binary.BigEndian.AppendUint32(nil, 1025), CodeFrameTooLarge, nil},
		{"truncated header", []byte{0, 0}, "", io.ErrUnexpectedEOF},
		{"truncated body", []byte{0, 0, 0, 5, TypePing, 1}, "", io.ErrUnexpectedEOF},
		{"clean end", nil, "", io.EOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := NewReader(bytes.NewReader(c.input), 1024, 64).ReadFrame()
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("got %v, want %v", err, c.err)
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != c.code {
				t.Fatalf("got %v, want ERROR %s", err, c.code)
			}
		})
	}
}

func TestReaderLimitIsInclusive(t *testing.T) {
	body := bytes.Repeat([]byte{1}, 1023)
	typ, got, err := NewReader(bytes.NewReader(AppendFrame(nil, TypePublish, body)), 1024, 64).ReadFrame()
	if err != nil || typ != TypePublish || len(got) != 1023 {
		t.Fatalf("frame of exactly the limit: typ=%d len=%d err=%v", typ, len(got), err)
	}
}

func TestSeqFrames(t *testing.T) {
	b := AppendSeqFrame(nil, TypeDeliver, 1<<63+5, []byte("pay"))
	typ, body, err := NewReader(bytes.NewReader(b), 1024, 64).ReadFrame()
	if err != nil || typ != TypeDeliver {
		t.Fatal(typ, err)
	}
	n, p, err := ParseSeq(body)
	if err != nil || n != 1<<63+5 || string(p) != "pay" {
		t.Fatalf("ParseSeq = %d %q %v", n, p, err)
	}
	if _, _, err := ParseSeq([]byte{1, 2, 3}); CodeOf(err) != CodeBadFrame {
		t.Fatalf("short PUBLISH body: %v", err)
	}
	if _, err := ParseNumber(make([]byte, 9)); CodeOf(err) != CodeBadFrame {
		t.Fatalf("ACK with 9 bytes: %v", err)
	}
}

func TestParseHello(t *testing.T) {
	cases := []struct {
		body string
		code Code
	}{
		{`{"protocol":1,"device":"store-1004","token":"t","last_seq":41}`, ""},
		{`{"protocol":1,"device":"a.b_c:d-E9"}`, ""},
		{`{"protocol":2,"device":"d"}`, CodeUnsupportedProtocol},
		{`{"device":"d"}`, CodeUnsupportedProtocol},
		{`{"protocol":1,"device":""}`, CodeBadFrame},
		{`{"protocol":1,"device":"has space"}`, CodeBadFrame},
		{`{"protocol":1,"device":"` + string(bytes.Repeat([]byte("a"), 129)) + `"}`, CodeBadFrame},
		{`{"protocol":"1","device":"d"}`, CodeBadFrame},
		{`null`, CodeBadFrame},
		{`[1]`, CodeBadFrame},
		{`{"protocol":1,"device":"d"} {}`, CodeBadFrame},
		{`not json`, CodeBadFrame},
	}
	for _, c := range cases {
		h, err := ParseHello([]byte(c.body))
		if c.code == "" {
			if err != nil {
				t.Errorf("%s: unexpected %v", c.body, err)
			}
			continue
		}
		if CodeOf(err) != c.code {
			t.Errorf("%s: got %v (%+v), want %s", c.body, err, h, c.code)
		}
	}
	h, _ := ParseHello([]byte(`{"protocol":1,"device":"d","last_seq":18446744073709551615}`))
	if h.LastSeq != 1<<64-1 {
		t.Fatalf("last_seq %d", h.LastSeq)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(frames(f, []byte{TypePing}, append([]byte{TypeHello}, `{"protocol":1,"device":"d"}`...)), 64)
	f.Add([]byte{0, 0, 0, 0}, 16)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1}, 16)
	f.Add([]byte{0, 0, 0, 9, TypeAck, 0, 0, 0, 0, 0, 0, 0, 1}, 16)
	f.Add(frames(f, append([]byte{TypePublish}, bytes.Repeat([]byte{7}, 300)...)), 16)
	f.Fuzz(func(t *testing.T, data []byte, window int) {
		window = 16 + (window&0xffff)%2048
		const max = 4096
		r := NewReader(iotest.HalfReader(bytes.NewReader(data)), max, window)
		consumed := 0
		for {
			typ, body, err := r.ReadFrame()
			if err != nil {
				var pe *Error
				if !errors.As(err, &pe) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error type %T %v", err, err)
				}
				return
			}
			if !KnownType(typ) || len(body) >= max {
				t.Fatalf("accepted type %d with %d bytes", typ, len(body))
			}
			consumed += 5 + len(body)
			if consumed > len(data) {
				t.Fatalf("returned more bytes than the input had")
			}
			// Whatever decodes must re-encode to the same bytes.
			if enc := AppendFrame(nil, typ, body); !bytes.Equal(enc, data[consumed-len(enc):consumed]) {
				t.Fatalf("re-encoding differs")
			}
		}
	})
}

func BenchmarkReadFrame(b *testing.B) {
	payload := bytes.Repeat([]byte("p"), 200)
	one := AppendSeqFrame(nil, TypePublish, 42, payload)
	stream := bytes.Repeat(one, 1000)
	src := bytes.NewReader(stream)
	r := NewReader(src, DefaultMaxFrameBytes, 4096)
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := r.ReadFrame(); err != nil {
			src.Reset(stream)
			r = NewReader(src, DefaultMaxFrameBytes, 4096)
			if _, _, err := r.ReadFrame(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkAppendDeliver(b *testing.B) {
	payload := bytes.Repeat([]byte("p"), 200)
	buf := make([]byte, 0, 4096)
	b.SetBytes(int64(len(payload) + 13))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendSeqFrame(buf[:0], TypeDeliver, uint64(i), payload)
	}
}

func FuzzWSReader(f *testing.F) {
	masked := AppendWSFrame(nil, TypeHello, []byte(`{"protocol":1,"device":"d"}`), true)
	f.Add(masked)
	f.Add(AppendWSFrame(nil, TypePing, nil, false))
	f.Add([]byte{0x81, 0x01, 'x'})                  // text
	f.Add([]byte{0x02, 0x01, TypePing, 0x80, 0x00}) // fragmented
	f.Add([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xC2, 0x81, 1, 2, 3, 4, TypePing})             // RSV1
	f.Add([]byte{0x83, 0x81, 1, 2, 3, 4, TypePing})             // reserved opcode
	f.Add([]byte{0x09, 0x80, 1, 2, 3, 4})                       // fragmented ping
	f.Add([]byte{0x82, 0xfe, 0x10, 0x00, 1, 2, 3, 4, TypePing}) // announces 4 KiB, sends 1 byte
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewWSReader(bufio.NewReaderSize(bytes.NewReader(data), 16), 1024, 512, false, func(ws.OpCode, []byte) {})
		for {
			typ, body, err := r.ReadFrame()
			if err != nil {
				return
			}
			if !KnownType(typ) || len(body) >= 1024 {
				t.Fatalf("accepted type %d with %d bytes", typ, len(body))
			}
		}
	})
}

func TestWSRoundTrip(t *testing.T) {
	for _, mask := range []bool{false, true} {
		var stream []byte
		for _, n := range []int{0, 100, 125, 126, 65535, 65536, 70000} {
			stream = AppendWSSeqFrame(stream, TypeDeliver, uint64(n), bytes.Repeat([]byte{'a'}, n), mask)
		}
		r := NewWSReader(bufio.NewReader(bytes.NewReader(stream)), 1<<20, 512, !mask, nil) // masked: the server reads
		for _, n := range []int{0, 100, 125, 126, 65535, 65536, 70000} {
			typ, body, err := r.ReadFrame()
			seq, p, _ := ParseSeq(body)
			if err != nil || typ != TypeDeliver || seq != uint64(n) || len(p) != n || (n > 0 && p[n-1] != 'a') {
				t.Fatalf("mask=%v n=%d: typ=%d seq=%d len=%d err=%v", mask, n, typ, seq, len(p), err)
			}
		}
	}
}

// The server side of WebSocket: masked client messages, with a release
// between frames as an idle connection does.
func BenchmarkWSReadFrame(b *testing.B) {
	payload := bytes.Repeat([]byte("p"), 200)
	one := AppendWSSeqFrame(nil, TypePublish, 42, payload, true)
	stream := bytes.Repeat(one, 1000)
	src := bytes.NewReader(stream)
	r := NewWSReader(src, DefaultMaxFrameBytes, 512, false, nil)
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
		if i%100 == 0 {
			r.Release()
		}
	}
}
