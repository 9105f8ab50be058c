package socketserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

const testMaxPayload = 64<<10 - 9

// sameAsDecoder fails t unless parseBatch, where it accepts body, decodes
// what decodeBatch does; it reports whether parseBatch accepted it.
func sameAsDecoder(t *testing.T, body []byte) bool {
	t.Helper()
	fast, ok := parseBatch(body, int(maxBatchValue(testMaxPayload)))
	if !ok {
		return false
	}
	full, err := decodeBatch(bytes.NewReader(body), testMaxPayload)
	if err != nil {
		t.Fatalf("parseBatch accepted %q, decodeBatch: %v", body, err)
	}
	if len(fast) != len(full) {
		t.Fatalf("%q: parseBatch %d messages, decodeBatch %d", body, len(fast), len(full))
	}
	for i := range fast {
		f, d := fast[i], full[i]
		if f.Device != d.Device || f.Key != d.Key || !bytes.Equal(f.Payload, d.Payload) {
			t.Fatalf("%q: message %d: parseBatch %+v, decodeBatch %+v", body, i, f, d)
		}
	}
	return true
}

func TestParseBatch(t *testing.T) {
	many := `{"messages":[` + strings.Repeat(`{"device":"d","payload":"AA=="},`, adminapi.MaxBatch) + `{"device":"d"}]}`
	for _, tc := range []struct {
		body string
		fast bool // parsed by hand; else left to decodeBatch
	}{
		{`{"messages":[{"device":"pos-1","payload":"aGVsbG8=","key":"k1"},{"device":"pos-2","payload":""}]}`, true},
		{" \n{ \"messages\" : [ { \"key\" : \"k\" , \"payload\" : \"AQID\" , \"device\" : \"a:b\" } ] }\r\n", true},
		{`{"messages":[]}`, true},
		{`{"messages":[{}]}`, true},
		{`{"messages":[{"device":"d\u0041","payload":"AA=="}]}`, false}, // escape
		{`{"messages":[{"device":"é","payload":"AA=="}]}`, false},       // not ASCII
		{`{"messages":[{"Device":"d","payload":"AA=="}]}`, false},       // json matches names without case
		{`{"messages":[{"device":"d","device":"e"}]}`, false},           // the last one wins there
		{`{"messages":[{"device":"d","payload":null}]}`, false},
		{`{"messages":[{"device":"d","ttl":5}]}`, false},
		{`{"messages":[{"device":"d","payload":"AA="}]}`, false}, // bad base64: decodeBatch's error
		{`{"messages":null}`, false},
		{`{"messages":[],"other":1}`, false},
		{`{"messages":[]} x`, false},
		{`{"messages":[{"device":"d"},]}`, false},
		{`{"messages":[{"device":"d"}`, false},
		{many, false}, // MaxBatch+1: decodeBatch's errTooMany
	} {
		if got := sameAsDecoder(t, []byte(tc.body)); got != tc.fast {
			t.Errorf("parseBatch(%.80q) accepted: %v, want %v", tc.body, got, tc.fast)
		}
	}
	_, err := decodeBatch(strings.NewReader(many), testMaxPayload)
	if err != errTooMany {
		t.Fatalf("decodeBatch of MaxBatch+1 messages: %v", err)
	}
}

func FuzzParseBatch(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"device":"pos-1","payload":"aGVsbG8=","key":"k1"}]}`,
		`{"messages":[{"device":"a","payload":"AQID"},{"device":"b","payload":"","key":"x"}]}`,
		`{"messages":[{}]}`, `{"messages":[]}`, `{"messages":[{"device":"d","payload":"AA"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { sameAsDecoder(t, body) })
}

func TestBatchResponseEncoding(t *testing.T) {
	for _, res := range [][]adminapi.BatchResult{
		{},
		{{Seq: 1}, {Seq: 18446744073709551615, Duplicate: true}, {Error: adminapi.CodeOutboxFull}},
		{{Error: adminapi.CodeTooLarge, Message: "payload exceeds 65527 bytes"}, {Duplicate: true}},
		{{Error: "e", Message: "quote \" backslash \\ <html> & \n tab\t é \u2028 \x01"}},
	} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(adminapi.BatchResponse{Results: res}); err != nil {
			t.Fatal(err)
		}
		if got := appendBatchResponse(nil, res); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("results %+v:\n got %s\nwant %s", res, got, want.Bytes())
		}
	}
}

func BenchmarkBatchJSON(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"messages":[`)
	for i := range 100 {
		fmt.Fprintf(&sb, `%s{"device":"dev-%d","payload":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==","key":"bench-%x"}`,
			map[bool]string{true: ",", false: ""}[i > 0], i, i*7919)
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	res := make([]adminapi.BatchResult, 100)
	for i := range res {
		res[i].Seq = uint64(1000 + i)
	}
	b.Run("decode/hand", func(b *testing.B) {
		for b.Loop() {
			if _, ok := parseBatch(body, int(maxBatchValue(testMaxPayload))); !ok {
				b.Fatal("not parsed")
			}
		}
	})
	b.Run("decode/json", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeBatch(bytes.NewReader(body), testMaxPayload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode/hand", func(b *testing.B) {
		for b.Loop() {
			appendBatchResponse(make([]byte, 0, 16+16*len(res)), res)
		}
	})
	b.Run("encode/json", func(b *testing.B) {
		for b.Loop() {
			enc := json.NewEncoder(&bytes.Buffer{})
			enc.SetEscapeHTML(false)
			_ = enc.Encode(adminapi.BatchResponse{Results: res})
		}
	})
}
