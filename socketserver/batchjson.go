package socketserver

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// The batch API's JSON is on the hot path of every backend send:
// reflection decoding a batch and encoding its answer cost about as much
// server CPU as storing it. These read and write its usual shape by hand
// and leave everything else to encoding/json.

// fastBatchBody is the largest body parseBatch is tried on: it needs the
// body whole, where decodeBatch streams it.
const fastBatchBody = 256 << 10

// parseBatch decodes {"messages":[{"device":"…","payload":"<base64>",
// "key":"…"},…]} with plain strings: printable ASCII, no escapes. false:
// the body has anything else (other or repeated fields, null, escapes,
// bad base64, more than MaxBatch messages, a message longer than
// maxValue, trailing data), and decodeBatch answers it, errors included.
// What it accepts, decodeBatch decodes the same.
func parseBatch(body []byte, maxValue int) ([]adminapi.BatchMessage, bool) {
	s := batchScan{b: body}
	if !s.skip('{') {
		return nil, false
	}
	if k, ok := s.str(); !ok || string(k) != "messages" || !s.skip(':') || !s.skip('[') {
		return nil, false
	}
	var msgs []adminapi.BatchMessage
	// One buffer for every payload: base64 is 4/3 of its bytes.
	slab := make([]byte, 0, len(body)*3/4)
	if !s.skip(']') {
		for {
			if len(msgs) == adminapi.MaxBatch {
				return nil, false
			}
			m, ok := s.message(maxValue, &slab)
			if !ok {
				return nil, false
			}
			msgs = append(msgs, m)
			if s.skip(',') {
				continue
			}
			if s.skip(']') {
				break
			}
			return nil, false
		}
	}
	if !s.skip('}') {
		return nil, false
	}
	s.space()
	return msgs, s.i == len(body)
}

type batchScan struct {
	b []byte
	i int
}

func (s *batchScan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// skip consumes c after any whitespace; false if c is not next.
func (s *batchScan) skip(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str returns the bytes of a string up to the next quote: the caller
// checks them (plain, or base64's alphabet).
func (s *batchScan) str() ([]byte, bool) {
	if !s.skip('"') {
		return nil, false
	}
	j := bytes.IndexByte(s.b[s.i:], '"')
	if j < 0 {
		return nil, false
	}
	v := s.b[s.i : s.i+j]
	s.i += j + 1
	return v, true
}

// plain: printable ASCII without escapes, which JSON leaves as it is.
func plain(v []byte) bool {
	for _, c := range v {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

func (s *batchScan) message(maxValue int, slab *[]byte) (m adminapi.BatchMessage, ok bool) {
	s.space()
	// decodeBatch refuses a message longer than maxValue; far from it,
	// both agree.
	start := s.i
	if !s.skip('{') {
		return m, false
	}
	if s.skip('}') {
		return m, true
	}
	var device, payload, key bool
	for {
		k, ok := s.str()
		if !ok || !s.skip(':') {
			return m, false
		}
		v, ok := s.str()
		if !ok {
			return m, false
		}
		switch string(k) {
		case "device":
			if device || !plain(v) {
				return m, false
			}
			device, m.Device = true, string(v)
		case "key":
			if key || !plain(v) {
				return m, false
			}
			key, m.Key = true, string(v)
		case "payload":
			// The decoder refuses what is not base64, but skips line
			// breaks, which JSON strings cannot hold raw.
			if payload || bytes.IndexByte(v, '\n') >= 0 || bytes.IndexByte(v, '\r') >= 0 {
				return m, false
			}
			payload = true
			b := *slab
			if cap(b)-len(b) < base64.StdEncoding.DecodedLen(len(v)) {
				return m, false
			}
			n, err := base64.StdEncoding.Decode(b[len(b):cap(b)], v)
			if err != nil {
				return m, false
			}
			m.Payload = b[len(b) : len(b)+n : len(b)+n]
			*slab = b[:len(b)+n]
		default:
			return m, false
		}
		if s.skip(',') {
			continue
		}
		if s.skip('}') {
			return m, s.i-start <= maxValue/2
		}
		return m, false
	}
}

// appendBatchResponse appends what writeJSON writes for
// BatchResponse{Results: res}.
func appendBatchResponse(dst []byte, res []adminapi.BatchResult) []byte {
	dst = append(dst, `{"results":[`...)
	for i, r := range res {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		n := len(dst)
		if r.Seq != 0 {
			dst = strconv.AppendUint(append(dst, `"seq":`...), r.Seq, 10)
		}
		if r.Duplicate {
			dst = append(comma(dst, n), `"duplicate":true`...)
		}
		if r.Error != "" {
			dst = appendJSONString(append(comma(dst, n), `"error":`...), r.Error)
		}
		if r.Message != "" {
			dst = appendJSONString(append(comma(dst, n), `"message":`...), r.Message)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}\n"...)
}

// comma separates a field from the ones after position n.
func comma(dst []byte, n int) []byte {
	if len(dst) > n {
		return append(dst, ',')
	}
	return dst
}

// appendJSONString appends s as a JSON string, as writeJSON's encoder
// does (no HTML escaping).
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(s)
			return append(dst, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
		}
	}
	return append(append(append(dst, '"'), s...), '"')
}
