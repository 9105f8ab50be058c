package socketserver_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// On the embedded store, backends read device messages through the admin
// API and acknowledge them; what is acknowledged is gone.
func TestEmbeddedUpstreamAPI(t *testing.T) {
	srv := startServer(t, store.NewMemory(), "pod-a", nil)
	backend := adminClient(srv, "")
	ctx := context.Background()
	c := dial(t, srv.Addrs().TCP)
	c.welcome("pos-1", 0)
	c.publish(7, "sale 1")
	c.expect(protocol.TypePubAck)
	c.publish(9, "sale 2")
	c.expect(protocol.TypePubAck)
	c.publish(9, "sale 2") // a retransmit: acknowledged, not appended again
	c.expect(protocol.TypePubAck)

	page, err := backend.ReadUpstream(ctx, 0, 10)
	if err != nil || len(page.Entries) != 2 {
		t.Fatalf("read: %+v %v", page, err)
	}
	for i, want := range []adminapi.UpstreamEntry{{Device: "pos-1", ID: 7, Payload: []byte("sale 1")}, {Device: "pos-1", ID: 9, Payload: []byte("sale 2")}} {
		e := page.Entries[i]
		if e.Device != want.Device || e.ID != want.ID || string(e.Payload) != string(want.Payload) || e.Seq == 0 {
			t.Fatalf("entry %d: %+v, want %+v", i, e, want)
		}
	}
	if page.Next != page.Entries[1].Seq || page.Entries[1].Seq <= page.Entries[0].Seq {
		t.Fatalf("next %d after entries %+v", page.Next, page.Entries)
	}
	// Paging: limit and after.
	if p, err := backend.ReadUpstream(ctx, 0, 1); err != nil || len(p.Entries) != 1 || p.Next != page.Entries[0].Seq {
		t.Fatalf("limit 1: %+v %v", p, err)
	}
	if p, err := backend.ReadUpstream(ctx, page.Entries[0].Seq, 10); err != nil || len(p.Entries) != 1 || p.Entries[0].ID != 9 {
		t.Fatalf("after the first: %+v %v", p, err)
	}
	// The raw answer: base64 payloads, the contract's field names.
	if code, body := api(t, srv, "GET", "/v1/upstream?limit=1", ""); code != 200 ||
		!strings.Contains(body, `"device":"pos-1","id":7,"payload":"c2FsZSAx"`) || !strings.Contains(body, `"next":`) {
		t.Fatalf("raw read: %d %s", code, body)
	}

	if err := backend.AckUpstream(ctx, page.Next); err != nil {
		t.Fatal(err)
	}
	if p, err := backend.ReadUpstream(ctx, 0, 10); err != nil || len(p.Entries) != 0 {
		t.Fatalf("after ack: %+v %v", p, err)
	}
	if p, err := backend.ReadUpstream(ctx, page.Next, 10); err != nil || len(p.Entries) != 0 || p.Next != page.Next {
		t.Fatalf("after ack, from next: %+v %v", p, err)
	}
	for _, q := range []string{"?after=x", "?limit=0", "?limit=1001", "?after=-1"} {
		if code, body := api(t, srv, "GET", "/v1/upstream"+q, ""); code != 400 || !strings.Contains(body, `"bad_query"`) {
			t.Fatalf("GET /v1/upstream%s: %d %s", q, code, body)
		}
	}
	if code, body := api(t, srv, "POST", "/v1/upstream/ack", `{"up_to":"x"}`); code != 400 {
		t.Fatalf("bad ack: %d %s", code, body)
	}
}

// With Redis the upstream is the Redis stream; the endpoints say so.
func TestUpstreamAPIOnRedis(t *testing.T) {
	srv := startServer(t, redisStore(t, redistest.Start(t)), "pod-a", nil)
	backend := adminClient(srv, "")
	_, err := backend.ReadUpstream(context.Background(), 0, 10)
	var e *adminapi.Error
	if !errors.As(err, &e) || e.Status != 404 || e.Code != adminapi.CodeUpstreamInRedis || !strings.Contains(e.Message, "<prefix>:upstream") {
		t.Fatalf("read on Redis: %v", err)
	}
	if err := backend.AckUpstream(context.Background(), 1); !errors.As(err, &e) || e.Status != 404 || e.Code != adminapi.CodeUpstreamInRedis {
		t.Fatalf("ack on Redis: %v", err)
	}
}
