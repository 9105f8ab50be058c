package socketserver_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// deliveriesUntil reads DELIVER frames (acknowledging them) until one
// carries marker, and returns the distinct seqs each payload came with.
func deliveriesUntil(c *rawConn, marker string) map[string][]uint64 {
	c.t.Helper()
	got := map[string][]uint64{}
	for {
		seq, p := c.deliver()
		if !slices.Contains(got[p], seq) {
			got[p] = append(got[p], seq)
		}
		c.ack(seq)
		if p == marker {
			return got
		}
	}
}

// A key repeated for the same device stores nothing and answers the first
// seq with duplicate:true, alone or in a batch; keys are per device; a
// key that is not 1-128 printable ASCII characters is refused with 400.
func TestIdempotencyKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func() store.Store) {
		srv := startServer(t, newStore(), "pod-a", nil)
		backend := adminClient(srv, "")
		ctx := context.Background()
		c := dial(t, srv.Addrs().TCP)
		c.welcome("d", 0)

		first, err := backend.Send(ctx, "d", []byte("order 1"), "order-1")
		if err != nil || first.Duplicate {
			t.Fatalf("first send: %+v %v", first, err)
		}
		again, err := backend.Send(ctx, "d", []byte("order 1"), "order-1")
		if err != nil || again != (adminapi.SendResult{Seq: first.Seq, Duplicate: true}) {
			t.Fatalf("repeat: %+v %v, want seq %d duplicate", again, err, first.Seq)
		}
		if code, body := postWithKey(t, srv, "order-1", "d"); code != 202 || body != `{"seq":`+strconv.FormatUint(first.Seq, 10)+`,"duplicate":true}` {
			t.Fatalf("raw repeat: %d %s", code, body)
		}
		res, err := backend.SendBatch(ctx, []adminapi.BatchMessage{{Device: "d", Payload: []byte("order 1"), Key: "order-1"},
			{Device: "other", Payload: []byte("order 1"), Key: "order-1"}, {Device: "d", Payload: []byte("order 2"), Key: "order-2"}})
		if err != nil || res[0] != (adminapi.BatchResult{Seq: first.Seq, Duplicate: true}) || res[1].Duplicate || res[1].Seq == 0 ||
			res[2] != (adminapi.BatchResult{Seq: first.Seq + 1}) {
			t.Fatalf("batch: %+v %v", res, err)
		}

		for _, bad := range []string{strings.Repeat("k", 129), "ключ", "tab\tkey"} {
			_, err := backend.Send(ctx, "d", []byte("bad"), bad)
			var e *adminapi.Error
			if !errors.As(err, &e) || e.Status != 400 || e.Code != adminapi.CodeBadKey || !e.Refused() {
				t.Fatalf("key %q: %v, want 400 bad_key", bad, err)
			}
		}
		if code, body := postWithKey(t, srv, "", "d"); code != 400 || !strings.Contains(body, `"bad_key"`) {
			t.Fatalf("empty key header: %d %s", code, body)
		}
		res, err = backend.SendBatch(ctx, []adminapi.BatchMessage{{Device: "d", Payload: []byte("bad"), Key: strings.Repeat("k", 129)}})
		if err != nil || res[0].Error != adminapi.CodeBadKey || res[0].Seq != 0 {
			t.Fatalf("batch with a bad key: %+v %v", res, err)
		}

		marker, err := backend.Send(ctx, "d", []byte("marker"), "")
		if err != nil || marker.Seq != first.Seq+2 {
			t.Fatalf("marker: %+v %v, want seq %d (nothing stored in between)", marker, err, first.Seq+2)
		}
		got := deliveriesUntil(c, "marker")
		if !slices.Equal(got["order 1"], []uint64{first.Seq}) || !slices.Equal(got["order 2"], []uint64{first.Seq + 1}) || len(got) != 3 {
			t.Fatalf("delivered %v", got)
		}
	})
}

// postWithKey posts "order 1" to device with an Idempotency-Key header, raw.
func postWithKey(t *testing.T, srv target, key, device string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+srv.Addrs().Admin+adminapi.MessagesPath(device), strings.NewReader("order 1"))
	req.Header.Set(adminapi.HeaderIdempotencyKey, key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// Two servers on one Redis: a backend that sent with a key through one pod
// repeats it through another and gets the same seq, marked duplicate; the
// device gets the message once.
func TestIdempotentSendAcrossServers(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	c := dial(t, a.Addrs().TCP)
	c.welcome("d", 0)
	ctx := context.Background()
	onA, err := adminClient(a, "").Send(ctx, "d", []byte("order 1"), "order-1")
	if err != nil || onA.Duplicate {
		t.Fatalf("send on pod-a: %+v %v", onA, err)
	}
	onB, err := adminClient(b, "").Send(ctx, "d", []byte("order 1"), "order-1")
	if err != nil || onB != (adminapi.SendResult{Seq: onA.Seq, Duplicate: true}) {
		t.Fatalf("repeat on pod-b: %+v %v, want seq %d duplicate", onB, err, onA.Seq)
	}
	marker := send(t, b, "d", "marker")
	got := deliveriesUntil(c, "marker")
	if !slices.Equal(got["order 1"], []uint64{onA.Seq}) || !slices.Equal(got["marker"], []uint64{marker}) || marker != onA.Seq+1 {
		t.Fatalf("delivered %v (marker seq %d), want order 1 once as %d", got, marker, onA.Seq)
	}
}

// Redis stalls (SIGSTOP) past the store timeout: the POST answers 503, an
// ambiguous outcome, though Redis stores the message once it runs again.
// The retry with the same key gets the original seq as a duplicate, and
// the device gets exactly one copy.
func TestAmbiguousSendRetriedWithKey(t *testing.T) {
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", nil) // store timeout 2 s
	c := dial(t, srv.Addrs().TCP)
	c.welcome("d", 0)
	warm := send(t, srv, "d", "warm") // the store's connections are open
	if got := deliveriesUntil(c, "warm"); !slices.Equal(got["warm"], []uint64{warm}) {
		t.Fatalf("delivered %v", got)
	}
	backend := adminClient(srv, "")
	ctx := context.Background()

	r.Stop()
	stalled := time.Now()
	_, err := backend.Send(ctx, "d", []byte("once"), "order-1")
	var e *adminapi.Error
	if !errors.As(err, &e) || e.Status != 503 || e.Code != adminapi.CodeUnavailable || !e.Ambiguous() || e.RetryAfter == 0 {
		t.Fatalf("send while Redis is stalled: %v, want an ambiguous 503 with Retry-After", err)
	}
	time.Sleep(time.Until(stalled.Add(3 * time.Second))) // the stall lasts ~3 s
	r.Continue()

	var retry adminapi.SendResult
	eventually(t, "retry answered", func() bool {
		retry, err = backend.Send(ctx, "d", []byte("once"), "order-1")
		return err == nil
	})
	// Redis stores the stalled send once it runs again, and the retry is its
	// duplicate. On a loaded machine the send may not have left the server
	// before its deadline: then the retry stores it, under the same seq.
	if retry.Seq != warm+1 {
		t.Fatalf("retry: %+v, want seq %d", retry, warm+1)
	}
	if !retry.Duplicate {
		t.Logf("the stalled send never reached Redis; the retry stored it")
	}
	marker := send(t, srv, "d", "marker")
	got := deliveriesUntil(c, "marker")
	if !slices.Equal(got["once"], []uint64{retry.Seq}) || marker != retry.Seq+1 {
		t.Fatalf("delivered %v (marker seq %d), want once exactly once as %d", got, marker, retry.Seq)
	}
}
