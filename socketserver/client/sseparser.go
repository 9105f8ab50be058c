package client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// sseEvent is one dispatched Server-Sent Event. Its slices are valid until
// the parser's next call.
type sseEvent struct {
	// typ is the event field ("message" when the event had none).
	typ []byte
	// data is the data lines joined by "\n".
	data []byte
	// id is the last event ID: the value of the latest id field, carried
	// over from earlier events as EventSource does; hasID says whether this
	// event set it.
	id    []byte
	hasID bool
	// retry is the event's retry field in milliseconds, -1 without one.
	retry int64
}

// messageType is the type of an event without an event field.
var messageType = []byte("message")

var errEventTooLarge = errors.New("sse: event larger than the frame limit")

// sseParser reads an event stream as the HTML standard's "event stream
// interpretation" says: lines end with CRLF, LF or CR; a line starting
// with a colon is a comment; "field: value" loses one space after the
// colon; data lines are joined by LF; a blank line dispatches the event; a
// block without data is dispatched only when it names its event (EventSource
// would drop it: for a deliver with an empty payload this keeps the seq);
// an event cut off by the end of the stream is discarded. Field values are
// bounded by max bytes.
type sseParser struct {
	r   *bufio.Reader
	max int

	started bool   // the byte order mark was looked for
	skipLF  bool   // the last line ended with CR: a LF right after it belongs to it
	line    []byte // a line that spans reads
	data    []byte
	hasData bool
	typ     []byte
	id      []byte
	hasID   bool
	retry   int64
}

func newSSEParser(r *bufio.Reader, max int) *sseParser {
	return &sseParser{r: r, max: max, retry: -1}
}

// buffered reports whether input is read that no event has used yet.
func (p *sseParser) buffered() bool { return p.r.Buffered() > 0 }

// next returns the next event.
func (p *sseParser) next() (sseEvent, error) {
	if !p.started {
		p.started = true
		if b, err := p.r.Peek(3); err == nil && bytes.Equal(b, []byte("\xef\xbb\xbf")) {
			_, _ = p.r.Discard(3)
		}
	}
	for {
		line, err := p.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if len(line) == 0 {
			if ev, ok := p.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue // a comment: the server's keepalive
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			p.typ = append(p.typ[:0], value...)
		case "data":
			if len(p.data)+len(value)+1 > p.max {
				return sseEvent{}, errEventTooLarge
			}
			p.data = append(append(p.data, value...), '\n')
			p.hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.id = append(p.id[:0], value...)
				p.hasID = true
			}
		case "retry":
			if n, err := strconv.ParseInt(string(value), 10, 64); err == nil && n >= 0 && isDigits(value) {
				p.retry = n
			}
		}
	}
}

// dispatch ends the current block: it returns its event unless the block
// had no data and no event name.
func (p *sseParser) dispatch() (sseEvent, bool) {
	ev := sseEvent{typ: p.typ, id: p.id, hasID: p.hasID, retry: p.retry}
	ok := p.hasData || len(p.typ) > 0
	if p.hasData {
		ev.data = p.data[:len(p.data)-1]
	}
	if len(ev.typ) == 0 {
		ev.typ = messageType
	}
	// The id is kept for later events; everything else starts over.
	p.data, p.hasData, p.typ, p.hasID, p.retry = p.data[:0], false, p.typ[:0], false, -1
	return ev, ok
}

// readLine returns the next line without its end. The slice is valid until
// the next call.
func (p *sseParser) readLine() ([]byte, error) {
	p.line = p.line[:0]
	for {
		buf, err := p.r.Peek(1)
		if err != nil {
			return nil, err
		}
		if p.skipLF {
			p.skipLF = false
			if buf[0] == '\n' {
				_, _ = p.r.Discard(1)
				continue
			}
		}
		buf, _ = p.r.Peek(p.r.Buffered())
		i := bytes.IndexAny(buf, "\r\n")
		if i < 0 {
			if len(p.line)+len(buf) > p.max {
				return nil, errEventTooLarge
			}
			p.line = append(p.line, buf...)
			_, _ = p.r.Discard(len(buf))
			continue
		}
		if len(p.line)+i > p.max {
			return nil, errEventTooLarge
		}
		p.skipLF = buf[i] == '\r'
		var line []byte
		if len(p.line) == 0 {
			line = buf[:i] // still in the reader's buffer: Discard does not move it
		} else {
			p.line = append(p.line, buf[:i]...)
			line = p.line
		}
		_, _ = p.r.Discard(i + 1)
		return line, nil
	}
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

func (e sseEvent) String() string {
	return fmt.Sprintf("event=%s id=%s retry=%d data=%q", e.typ, e.id, e.retry, e.data)
}
