package client

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// parseAll returns every event of stream, as sseEvent.String prints it.
func parseAll(t *testing.T, stream string, bufSize, max int) ([]string, error) {
	t.Helper()
	p := newSSEParser(bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(stream)), bufSize), max)
	var out []string
	for {
		ev, err := p.next()
		if err != nil {
			return out, err
		}
		out = append(out, ev.String())
	}
}

func TestSSEParser(t *testing.T) {
	for _, tc := range []struct {
		name, stream string
		want         []string
	}{
		{"one event", "event: deliver\nid: 7\ndata: hello\n\n",
			[]string{`event=deliver id=7 retry=-1 data="hello"`}},
		{"data lines joined by LF", "event: deliver\nid: 8\ndata: a\ndata:b\ndata:  c\n\n",
			[]string{`event=deliver id=8 retry=-1 data="a\nb\n c"`}},
		{"CRLF and CR line ends", "event: deliver\r\nid: 9\rdata: x\r\n\r\nevent: deliver\rid: 10\rdata: y\r\r",
			[]string{`event=deliver id=9 retry=-1 data="x"`, `event=deliver id=10 retry=-1 data="y"`}},
		{"comments and keepalives", ":\n\n: keepalive\n\nevent: welcome\n:inside\nretry: 1500\ndata: {}\n\n",
			[]string{`event=welcome id= retry=1500 data="{}"`}},
		{"no event name is message", "data: plain\n\n",
			[]string{`event=message id= retry=-1 data="plain"`}},
		{"id carries over, retry does not", "id: 5\nretry: 10\nevent: a\ndata: 1\n\nevent: b\ndata: 2\n\n",
			[]string{`event=a id=5 retry=10 data="1"`, `event=b id=5 retry=-1 data="2"`}},
		{"empty data line is an empty payload", "event: deliver\nid: 11\ndata:\n\n",
			[]string{`event=deliver id=11 retry=-1 data=""`}},
		{"named event without data", "event: deliver\nid: 12\n\n",
			[]string{`event=deliver id=12 retry=-1 data=""`}},
		{"block with only an id dispatches nothing", "id: 13\n\nevent: x\ndata: y\n\n",
			[]string{`event=x id=13 retry=-1 data="y"`}},
		{"bad retry ignored, field without colon", "retry: 1x\nretry\nevent\ndata\n\n",
			[]string{`event=message id= retry=-1 data=""`}},
		{"byte order mark", "\xef\xbb\xbfevent: e\ndata: d\n\n",
			[]string{`event=e id= retry=-1 data="d"`}},
		{"unknown fields ignored, id with NUL ignored", "foo: bar\nid: 1\x002\nevent: e\ndata: d\n\n",
			[]string{`event=e id= retry=-1 data="d"`}},
		{"value keeps colons", "event: e\ndata: a: b:c\n\n",
			[]string{`event=e id= retry=-1 data="a: b:c"`}},
		{"cut-off event discarded", "event: e\ndata: d\n\nevent: f\ndata: lost\n",
			[]string{`event=e id= retry=-1 data="d"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, bufSize := range []int{16, 4096} { // lines spanning reads, and not
				got, err := parseAll(t, tc.stream, bufSize, 1024)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("buffer %d: error %v, want EOF", bufSize, err)
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("buffer %d:\n got %q\nwant %q", bufSize, got, tc.want)
				}
			}
		})
	}
}

func TestSSEParserBoundsEvents(t *testing.T) {
	long := strings.Repeat("x", 100)
	for name, stream := range map[string]string{
		"one long line":    "event: deliver\ndata: " + long + "\n\n",
		"many data lines":  "event: deliver\n" + strings.Repeat("data: "+long[:30]+"\n", 4) + "\n",
		"line without end": "data: " + long,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseAll(t, stream, 16, 64); !errors.Is(err, errEventTooLarge) {
				t.Fatalf("error %v, want errEventTooLarge", err)
			}
		})
	}
}

func BenchmarkSSEParser(b *testing.B) {
	stream := strings.Repeat(": keepalive\n\nevent: deliver\nid: 1796220000000001\ndata: "+strings.Repeat("x", 64)+"\n\n", 64)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	r := strings.NewReader(stream)
	br := bufio.NewReaderSize(r, sseReadBufferSize)
	p := newSSEParser(br, 1<<20)
	for b.Loop() {
		r.Reset(stream)
		br.Reset(r)
		for {
			if _, err := p.next(); err != nil {
				break
			}
		}
	}
}
