package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// The HTTP/2 reader returns the frames it was given, large ones grown as
// their bytes arrive, and refuses a declared length above the limit
// before reading the payload.
func TestH2Reader(t *testing.T) {
	var in []byte
	in = append(AppendH2Header(in, 3, H2Data, H2FlagEndStream, 1), "abc"...)
	big := bytes.Repeat([]byte{9}, 5000)
	in = append(AppendH2Header(in, len(big), H2Data, 0, 3), big...)
	in = AppendH2Header(in, 0, H2Settings, H2FlagAck, 0)
	in = AppendH2Header(in, H2MaxFrame+1, H2Data, 0, 1)
	r := NewH2Reader(iotest.OneByteReader(bytes.NewReader(in)), 64)
	for _, want := range []H2Frame{{H2Data, H2FlagEndStream, 1, []byte("abc")}, {H2Data, 0, 3, big}, {H2Settings, H2FlagAck, 0, nil}} {
		f, err := r.ReadFrame()
		if err != nil || f.Type != want.Type || f.Flags != want.Flags || f.Stream != want.Stream || !bytes.Equal(f.Payload, want.Payload) {
			t.Fatalf("got %+v %v, want %+v", f.Type, err, want.Type)
		}
	}
	if _, err := r.ReadFrame(); CodeOf(err) != CodeFrameTooLarge {
		t.Fatalf("oversized frame: %v", err)
	}
}

func TestHPACKLiteral(t *testing.T) {
	long := string(bytes.Repeat([]byte("v"), 300))
	got := AppendHPACKLiteral(nil, "grpc-message", long)
	// 0x00, name length 12, name, value length 300 = 127 + 173 (0xad 0x01).
	want := append(append([]byte{0, 12}, "grpc-message"...), 127, 0xad, 0x01)
	if !bytes.Equal(got[:len(want)], want) || string(got[len(want):]) != long {
		t.Fatalf("got %x", got[:len(want)])
	}
}

func FuzzH2Reader(f *testing.F) {
	f.Add(append(AppendH2Header(nil, 3, H2Data, 0, 1), "abc"...))
	f.Add(AppendH2Header(nil, 1<<20, H2Data, 0, 1))
	f.Add(append(AppendH2Header(nil, 2000, H2Headers, 0, 1), make([]byte, 2000)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewH2Reader(iotest.HalfReader(bytes.NewReader(data)), 64)
		consumed := 0
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				var pe *Error
				if !errors.As(err, &pe) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %T %v", err, err)
				}
				return
			}
			if len(fr.Payload) > H2MaxFrame {
				t.Fatalf("accepted %d bytes over the limit", len(fr.Payload))
			}
			consumed += H2HeaderLen + len(fr.Payload)
			if consumed > len(data) || !bytes.Equal(fr.Payload, data[consumed-len(fr.Payload):consumed]) {
				t.Fatalf("returned bytes the input did not have there")
			}
		}
	})
}
