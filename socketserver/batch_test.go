package socketserver_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/socketcluster/socketcluster/socketserver"
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
		type msg struct {
			Device  string `json:"device"`
			Payload []byte `json:"payload"`
		}
		msgs := []msg{{"a", []byte("a1")}, {"full", []byte("f1")}, {"a", []byte("a2")}, {"bad device", []byte("x")},
			{"full", []byte("f2")}, {"full", []byte("f3")}, {"a", []byte(strings.Repeat("x", 600))},
			{"full", []byte("f4")}, {"full", []byte("f5")}, {"a", []byte("a3")}}
		body, _ := json.Marshal(map[string][]msg{"messages": msgs})
		code, resp := api(t, srv, "POST", "/v1/messages", string(body))
		if code != 200 {
			t.Fatalf("POST /v1/messages: %d %s", code, resp)
		}
		var got struct {
			Results []struct {
				Seq   uint64
				Error string
			}
		}
		if err := json.Unmarshal([]byte(resp), &got); err != nil {
			t.Fatal(err)
		}
		// Seqs relative to each device's first: a new outbox starts from the clock.
		want := []struct {
			seq uint64
			err string
		}{{1, ""}, {1, ""}, {2, ""}, {0, "bad_device"}, {2, ""}, {3, ""}, {0, "too_large"}, {0, "outbox_full"}, {0, "not_attempted"}, {3, ""}}
		if len(got.Results) != len(want) {
			t.Fatalf("%d results for %d messages: %s", len(got.Results), len(want), resp)
		}
		base := map[string]uint64{"a": got.Results[0].Seq - 1, "full": got.Results[1].Seq - 1}
		for i, w := range want {
			r := got.Results[i]
			if w.seq != 0 {
				r.Seq -= base[msgs[i].Device]
			}
			if r.Seq != w.seq || r.Error != w.err {
				t.Errorf("message %d (%s): seq %d error %q, want seq %d error %q", i, msgs[i].Device, r.Seq, r.Error, w.seq, w.err)
			}
		}
		for i, p := range []string{"a1", "a2", "a3"} {
			if seq, payload := c.deliver(); seq != base["a"]+uint64(i+1) || payload != p {
				t.Fatalf("DELIVER %d %q, want %d %q", seq-base["a"], payload, i+1, p)
			}
		}
		if code, resp := api(t, srv, "POST", "/v1/messages", `{"messages":[{"device":"a","payload":"not base64!"}]}`); code != 400 || !strings.Contains(resp, "bad_body") {
			t.Fatalf("undecodable batch: %d %s", code, resp)
		}
	})
}
