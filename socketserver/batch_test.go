package socketserver_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// A batch answers each message in order, keeps each device's messages in
// order, and stops a device's messages at its first failure so that a
// retry cannot reorder them.
func TestBatchSend(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func() store.Store) {
		srv := startServer(t, newStore(), "pod-a", func(c *socketserver.Config) {
			c.MaxPending = 3
			c.MaxFrameBytes = 512
		})
		c := dial(t, srv.Addrs().TCP)
		c.welcome("a", 0)
		msgs := []adminapi.BatchMessage{{Device: "a", Payload: []byte("a1")}, {Device: "full", Payload: []byte("f1")},
			{Device: "a", Payload: []byte("a2")}, {Device: "bad device", Payload: []byte("x")},
			{Device: "full", Payload: []byte("f2")}, {Device: "full", Payload: []byte("f3")},
			{Device: "a", Payload: []byte(strings.Repeat("x", 600))}, {Device: "full", Payload: []byte("f4")},
			{Device: "full", Payload: []byte("f5")}, {Device: "a", Payload: []byte("a3")}}
		got, err := adminClient(srv, "").SendBatch(context.Background(), msgs)
		if err != nil {
			t.Fatal(err)
		}
		// Seqs start anywhere (section 6); each device's go up by one.
		a, f := got[0].Seq, got[1].Seq
		want := []adminapi.BatchResult{{Seq: a}, {Seq: f}, {Seq: a + 1}, {Error: adminapi.CodeBadDevice}, {Seq: f + 1}, {Seq: f + 2},
			{Error: adminapi.CodeTooLarge}, {Error: adminapi.CodeOutboxFull}, {Error: adminapi.CodeNotAttempted}, {Seq: a + 2}}
		for i, w := range want {
			if r := got[i]; r.Seq != w.Seq || r.Error != w.Error || a == 0 || f == 0 {
				t.Errorf("message %d (%s): seq %d error %q, want seq %d error %q", i, msgs[i].Device, r.Seq, r.Error, w.Seq, w.Error)
			}
		}
		for i, p := range []string{"a1", "a2", "a3"} {
			if seq, payload := c.deliver(); seq != a+uint64(i) || payload != p {
				t.Fatalf("DELIVER %d %q, want %d %q", seq, payload, a+uint64(i), p)
			}
		}
		if code, resp := api(t, srv, "POST", "/v1/messages", `{"messages":[{"device":"a","payload":"not base64!"}]}`); code != 400 || !strings.Contains(resp, `"bad_body"`) {
			t.Fatalf("undecodable batch: %d %s", code, resp)
		}
	})
}

// notStored fails the test if device has anything stored.
func notStored(t *testing.T, srv target, device string) {
	t.Helper()
	if _, err := adminClient(srv, "").Device(context.Background(), device); !adminapi.IsRefused(err) {
		t.Fatalf("device %s: %v, want 404 (nothing stored)", device, err)
	}
}

// The 1,001st message refuses the whole batch with 413 too_many, and
// nothing of it is stored.
func TestBatchTooMany(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	batch := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"messages":[`)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"device":"many-%d","payload":"aGk="}`, i%3)
		}
		b.WriteString(`]}`)
		return b.String()
	}
	code, resp := api(t, srv, "POST", adminapi.PathMessages, batch(adminapi.MaxBatch+1))
	if code != 413 || !strings.Contains(resp, `"too_many"`) {
		t.Fatalf("1,001 messages: %d %s", code, resp)
	}
	for i := 0; i < 3; i++ {
		notStored(t, srv, fmt.Sprintf("many-%d", i))
	}
	// 1,000 pass.
	if code, resp := api(t, srv, "POST", adminapi.PathMessages, batch(adminapi.MaxBatch)); code != 200 {
		t.Fatalf("1,000 messages: %d %.200s", code, resp)
	}
}

// Anything but whitespace after the JSON object refuses the batch with 400
// and stores nothing; trailing whitespace is fine.
func TestBatchTrailingData(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	const one = `{"messages":[{"device":"g","payload":"aGk=","key":"k1"}]}`
	for _, tail := range []string{"x", "{}", one, `"s"`, "]", "\n0"} {
		code, resp := api(t, srv, "POST", adminapi.PathMessages, one+tail)
		if code != 400 || !strings.Contains(resp, `"bad_body"`) {
			t.Fatalf("trailing %q: %d %s", tail, code, resp)
		}
		notStored(t, srv, "g")
	}
	for _, body := range []string{`{"messages":[{"device":"g","payload":"aGk="}]`, `{"messages":{}}`, `[]`,
		`{"messages":[],"messages":[]}`} {
		if code, resp := api(t, srv, "POST", adminapi.PathMessages, body); code != 400 {
			t.Fatalf("%s: %d %s", body, code, resp)
		}
	}
	if code, resp := api(t, srv, "POST", adminapi.PathMessages, " "+one+" \r\n\t"); code != 200 || !strings.Contains(resp, `"seq"`) {
		t.Fatalf("trailing whitespace: %d %s", code, resp)
	}
	// Unknown fields are skipped, null messages is an empty batch.
	if code, resp := api(t, srv, "POST", adminapi.PathMessages, `{"v":{"x":[1,2]},"messages":null}`); code != 200 || resp != "{\"results\":[]}\n" {
		t.Fatalf("unknown field, null messages: %d %s", code, resp)
	}
}

// genBody is a request body generated as it is read: head, then rep
// until size bytes, then tail; the client allocates nothing for it.
type genBody struct {
	parts [3][]byte
	reps  int
	part  int
	off   int
}

func newGenBody(head, rep, tail string, size int) *genBody {
	return &genBody{parts: [3][]byte{[]byte(head), []byte(rep), []byte(tail)}, reps: (size - len(head) - len(tail)) / len(rep)}
}

func (g *genBody) size() int64 {
	return int64(len(g.parts[0]) + g.reps*len(g.parts[1]) + len(g.parts[2]))
}

func (g *genBody) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && g.part < 3 {
		if g.part == 1 && g.reps == 0 {
			g.part++
			continue
		}
		c := copy(p[n:], g.parts[g.part][g.off:])
		n += c
		if g.off += c; g.off == len(g.parts[g.part]) {
			g.off = 0
			if g.part == 1 {
				g.reps--
			} else {
				g.part++
			}
		}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// An 80 MB batch body that will be refused costs the server memory for
// what it reads before refusing, not for the body: a single huge payload
// is refused at the bound of one message, more than 1,000 messages at the
// 1,001st. Measured in process (server and client) around the request.
func TestBatchBodyMemory(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	const size = 80 << 20
	for _, c := range []struct {
		name string
		body *genBody
		code string
	}{
		{"one huge payload", newGenBody(`{"messages":[{"device":"huge","payload":"`, "QUFB", `"}]}`, size), adminapi.CodeTooLarge},
		{"a million messages", newGenBody(`{"messages":[`, `{"device":"huge","payload":"QUFBQUFBQUFB"},`, `{"device":"huge","payload":""}]}`, size), adminapi.CodeTooMany},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+srv.Addrs().Admin+adminapi.PathMessages, c.body)
			req.ContentLength = c.body.size()
			hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			runtime.ReadMemStats(&after)
			if resp.StatusCode != 413 || !strings.Contains(string(body), `"`+c.code+`"`) {
				t.Fatalf("%d %s, want 413 %s", resp.StatusCode, body, c.code)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("allocated %.1f MiB, heap grew %.1f MiB for a %d MiB body", float64(alloc)/(1<<20), float64(heap)/(1<<20), size>>20)
			if alloc > 8<<20 || heap > 8<<20 {
				t.Fatalf("allocated %d bytes, heap grew %d bytes: the body was buffered", alloc, heap)
			}
			notStored(t, srv, "huge")
		})
	}
}

// At most a few batch requests are served at once; more wait a moment,
// then get 503 busy with Retry-After, unread.
func TestBatchConcurrencyLimit(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	// Requests whose bodies never finish hold their slots.
	const n = 12
	conns := make([]net.Conn, n)
	for i := range conns {
		nc, err := net.Dial("tcp", srv.Addrs().Admin)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns[i] = nc
		fmt.Fprintf(nc, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"messages\":[", adminapi.PathMessages)
	}
	type answer struct {
		status     int
		retryAfter string
		body       string
	}
	answers := make(chan answer, n)
	for _, nc := range conns {
		go func() {
			_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil {
				answers <- answer{} // still held
				return
			}
			b, _ := io.ReadAll(resp.Body)
			answers <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
		}()
	}
	refused := 0
	for range n {
		a := <-answers
		if a.status == 0 {
			continue
		}
		if a.status != 503 || a.retryAfter == "" || !strings.Contains(a.body, `"busy"`) {
			t.Fatalf("answer %d %q %s, want 503 busy with Retry-After", a.status, a.retryAfter, a.body)
		}
		refused++
	}
	if refused < n-8 || refused > n-4 {
		t.Fatalf("%d of %d unfinished batch requests refused; want a bound of 4-8 at once", refused, n)
	}
	for _, nc := range conns {
		nc.Close()
	}
	eventually(t, "batches served again", func() bool {
		_, err := adminClient(srv, "").SendBatch(context.Background(), []adminapi.BatchMessage{{Device: "d", Payload: []byte("x")}})
		return err == nil
	})
}
