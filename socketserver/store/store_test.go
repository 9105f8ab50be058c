package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Every behaviour is checked on both implementations: the embedded store
// must mean exactly what Redis means.
func forEachStore(t *testing.T, f func(t *testing.T, st store.Store)) {
	t.Run("memory", func(t *testing.T) { f(t, store.NewMemory()) })
	t.Run("redis", func(t *testing.T) {
		f(t, store.NewRedis(redistest.Start(t).Client(), "t"))
	})
	t.Run("redis-cluster", func(t *testing.T) {
		f(t, store.NewRedis(redistest.StartCluster(t).Client(), "t"))
	})
}

var ctx = context.Background()

var noLimits store.Limits

func hello(t *testing.T, st store.Store, dev, server string, lastSeq uint64) store.Session {
	t.Helper()
	s, err := st.Hello(ctx, dev, store.Holder{Server: server, Conn: 1}, lastSeq)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func enqueue(t *testing.T, st store.Store, dev string, payload string, lim store.Limits) (store.Stored, error) {
	t.Helper()
	return store.Enqueue(ctx, st, dev, store.Outgoing{Payload: []byte(payload)}, lim)
}

// mustEnqueue stores n messages m1..mn and returns the seq before the
// first: seqs of a new outbox start from the clock, not from 1.
func mustEnqueue(t *testing.T, st store.Store, dev string, n int) (base uint64) {
	t.Helper()
	for i := 0; i < n; i++ {
		r, err := enqueue(t, st, dev, fmt.Sprintf("m%d", i+1), noLimits)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			base = r.Seq - 1
		} else if r.Seq != base+uint64(i)+1 {
			t.Fatalf("message %d got seq %d, want %d", i+1, r.Seq, base+uint64(i)+1)
		}
	}
	return base
}

// rel gives seqs relative to base.
func rel(base uint64, ms []store.Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq - base
	}
	return out
}

func TestHelloEpochsAndResume(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		s1 := hello(t, st, "d", "a", 0)
		if s1.Resumed || s1.PrevServer != "" || s1.LastPublishID != 0 {
			t.Fatalf("first hello: %+v", s1)
		}
		// Epochs start from the clock, so they stay above any epoch issued
		// before the store lost the session.
		if now := uint64(time.Now().Add(-time.Minute).UnixMicro()); s1.Epoch < now {
			t.Fatalf("first epoch %d is below the clock %d", s1.Epoch, now)
		}
		s2 := hello(t, st, "d", "b", 0)
		if s2.Epoch <= s1.Epoch || !s2.Resumed || s2.PrevServer != "a" {
			t.Fatalf("second hello: %+v", s2)
		}
		// A message or state alone does not make the next HELLO a resume.
		mustEnqueue(t, st, "fresh", 1)
		if s := hello(t, st, "fresh", "a", 0); s.Resumed {
			t.Fatalf("first HELLO after a message reports resumed")
		}
	})
}

func TestOutboxAckAndLastSeq(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		base := mustEnqueue(t, st, "d", 5)
		if now := uint64(time.Now().Add(-time.Minute).UnixMicro()); base < now {
			t.Fatalf("a new outbox starts at %d, below the clock %d", base, now)
		}
		s := hello(t, st, "d", "a", base+2) // last_seq counts as an ACK
		if s.AckedSeq != base+2 || s.HeadSeq != base+5 {
			t.Fatalf("acked after last_seq 2: %d, head %d (want 5)", s.AckedSeq-base, s.HeadSeq-base)
		}
		ms, err := st.Pending(ctx, "d", s.AckedSeq, 100)
		if err != nil || fmt.Sprint(rel(base, ms)) != "[3 4 5]" || string(ms[0].Payload) != "m3" {
			t.Fatalf("pending after 2: %v %v", rel(base, ms), err)
		}
		if ms, _ := st.Pending(ctx, "d", base+3, 1); fmt.Sprint(rel(base, ms)) != "[4]" {
			t.Fatalf("page after 3: %v", rel(base, ms))
		}
		if err := st.Ack(ctx, "d", s.Epoch, base+4); err != nil {
			t.Fatal(err)
		}
		// Pending below the ack starts at the ack: acked messages are gone.
		if ms, _ := st.Pending(ctx, "d", 0, 100); fmt.Sprint(rel(base, ms)) != "[5]" {
			t.Fatalf("pending after ack 4: %v", rel(base, ms))
		}
		// The audit sees the same cursor and backlog as the device's readers.
		if a, err := st.Audit(ctx, []string{"d"}); err != nil || a[0] != (store.AuditInfo{Epoch: s.Epoch, AckedSeq: base + 4, Pending: 1}) {
			t.Fatalf("audit after ack 4: %+v %v", a, err)
		}
		// A last_seq below the outbox (from an older outbox) acknowledges nothing.
		if s := hello(t, st, "d", "a", 3); s.AckedSeq != base+4 {
			t.Fatalf("old last_seq moved the ack to %d", s.AckedSeq-base)
		}
		s = hello(t, st, "d", "a", 0)
		// An ACK above the highest seq is taken as the highest seq.
		if err := st.Ack(ctx, "d", s.Epoch, base+1000); err != nil {
			t.Fatal(err)
		}
		info, _ := st.Device(ctx, "d")
		if info.AckedSeq != base+5 || info.LastSeq != base+5 || info.Pending != 0 {
			t.Fatalf("device after over-ack: %+v", info)
		}
		// Seqs are never reused after everything was acked.
		if r, _ := enqueue(t, st, "d", "x", noLimits); r.Seq != base+6 {
			t.Fatalf("next seq %d, want 6", r.Seq-base)
		}
		if s2 := hello(t, st, "d", "a", 1<<64-1); s2.AckedSeq != base+6 {
			t.Fatalf("huge last_seq: acked %d, want 6", s2.AckedSeq-base)
		}
	})
}

// The store loses a device's keys (Redis restarted empty, a failover, an
// eviction): seqs still never go back, a last_seq from before acknowledges
// nothing new, and the live connection's session can be restored.
func TestSeqsSurviveDataLoss(t *testing.T) {
	for _, kind := range []string{"memory", "redis"} {
		t.Run(kind, func(t *testing.T) {
			var st store.Store
			var wipe func()
			if kind == "memory" {
				st = store.NewMemory()
				wipe = func() { st = store.NewMemory() } // the embedded store restarted
			} else {
				srv := redistest.Start(t)
				st = store.NewRedis(srv.Client(), "t")
				wipe = func() { srv.Kill(); srv.Restart() } // no persistence
			}
			base := mustEnqueue(t, st, "d", 5)
			s := hello(t, st, "d", "a", 0)
			if err := st.Ack(ctx, "d", s.Epoch, base+5); err != nil {
				t.Fatal(err)
			}
			wipe()
			var got []uint64
			for i := 0; i < 3; i++ {
				r, err := enqueue(t, st, "d", fmt.Sprint("n", i), noLimits)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, r.Seq)
			}
			if got[0] <= base+5 || got[1] != got[0]+1 || got[2] != got[1]+1 {
				t.Fatalf("seqs after the loss %v, want increasing above %d", got, base+5)
			}
			// The still-connected device's ACK finds its session lost ...
			if err := st.Ack(ctx, "d", s.Epoch, base+5); !errors.Is(err, store.ErrLost) {
				t.Fatalf("ack after the loss: %v, want ErrLost", err)
			}
			// ... its server restores it and goes on with the same epoch.
			if err := st.Reclaim(ctx, "d", store.Holder{Server: "a", Conn: 1}, s.Epoch, 7); err != nil {
				t.Fatal(err)
			}
			if err := st.Ack(ctx, "d", s.Epoch, base+5); err != nil {
				t.Fatalf("ack after reclaim: %v", err)
			}
			if info, _ := st.Device(ctx, "d"); !info.Connected || info.Server != "a" || info.Pending != 3 {
				t.Fatalf("after reclaim: %+v", info)
			}
			ms, _ := st.Pending(ctx, "d", base+5, 10)
			if len(ms) != 3 || ms[0].Seq != got[0] {
				t.Fatalf("pending after the device's last seq: %v", ms)
			}
			// A reconnect with last_seq from before the loss deletes nothing.
			s2 := hello(t, st, "d", "b", base+5)
			if s2.Epoch <= s.Epoch || s2.LastPublishID != 7 {
				t.Fatalf("hello after the loss: %+v (epoch before %d)", s2, s.Epoch)
			}
			if ms, _ := st.Pending(ctx, "d", s2.AckedSeq, 10); len(ms) != 3 {
				t.Fatalf("last_seq from before the loss deleted messages: %d left", len(ms))
			}
			// The old connection can no longer reclaim it.
			if err := st.Reclaim(ctx, "d", store.Holder{Server: "a", Conn: 1}, s.Epoch, 0); !errors.Is(err, store.ErrFenced) {
				t.Fatalf("reclaim by a taken-over connection: %v", err)
			}
		})
	}
}

func TestFencing(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		base := mustEnqueue(t, st, "d", 3)
		a, b := store.Holder{Server: "a", Conn: 1}, store.Holder{Server: "b", Conn: 1}
		old, _ := st.Hello(ctx, "d", a, 0)
		cur, _ := st.Hello(ctx, "d", b, 0)
		if err := st.Ack(ctx, "d", old.Epoch, base+3); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("ack of old epoch: %v", err)
		}
		if _, err := st.Publish(ctx, "d", old.Epoch, 1, []byte("x")); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("publish of old epoch: %v", err)
		}
		if info, _ := st.Device(ctx, "d"); info.AckedSeq != base {
			t.Fatalf("fenced ack applied: %+v", info)
		}
		// The old connection ending must not disown the new one, nor may an
		// earlier connection of the same server.
		_ = st.Release(ctx, "d", a)
		_ = st.Release(ctx, "d", store.Holder{Server: "b", Conn: 2})
		if info, _ := st.Device(ctx, "d"); !info.Connected || info.Server != "b" {
			t.Fatalf("release by another connection disowned the session: %+v", info)
		}
		_ = st.Release(ctx, "d", b)
		if info, _ := st.Device(ctx, "d"); info.Connected || info.Server != "" {
			t.Fatalf("release did not disconnect: %+v", info)
		}
		if a, _ := st.Audit(ctx, []string{"d", "nobody"}); a[0].Epoch != cur.Epoch || a[1] != (store.AuditInfo{}) {
			t.Fatalf("audit: %+v", a)
		}
	})
}

func TestPublishDedup(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		s := hello(t, st, "d", "a", 0)
		for _, c := range []struct {
			id  uint64
			dup bool
		}{{0, false}, {0, true}, {5, false}, {5, true}, {3, true}, {1 << 60, false}, {1<<60 - 1, true}, {1<<60 + 1, false}} {
			dup, err := st.Publish(ctx, "d", s.Epoch, c.id, []byte("p"))
			if err != nil || dup != c.dup {
				t.Fatalf("publish id %d: dup=%v err=%v, want dup=%v", c.id, dup, err, c.dup)
			}
		}
		if s2 := hello(t, st, "d", "b", 0); s2.LastPublishID != 1<<60+1 {
			t.Fatalf("last_publish_id %d", s2.LastPublishID)
		}
	})
}

func TestOutboxFull(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		lim := store.Limits{MaxPending: 3}
		var base uint64
		for i := 0; i < 3; i++ {
			r, err := enqueue(t, st, "d", "x", lim)
			if err != nil {
				t.Fatal(err)
			}
			base = r.Seq - uint64(i) - 1
		}
		if _, err := enqueue(t, st, "d", "x", lim); !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("4th message with max 3: %v", err)
		}
		hello(t, st, "d", "a", base+1)
		if _, err := enqueue(t, st, "d", "x", lim); err != nil {
			t.Fatalf("after an ack there is room: %v", err)
		}
	})
}

// Outboxes are bounded in payload bytes too; acknowledged messages free
// their bytes.
func TestOutboxBytes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		lim := store.Limits{MaxPendingBytes: 10}
		r, err := enqueue(t, st, "d", "123456", lim)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := enqueue(t, st, "d", "12345", lim); !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("11 bytes with a limit of 10: %v", err)
		}
		if _, err := enqueue(t, st, "d", "1234", lim); err != nil {
			t.Fatalf("10 bytes with a limit of 10: %v", err)
		}
		s := hello(t, st, "d", "a", 0)
		if err := st.Ack(ctx, "d", s.Epoch, r.Seq); err != nil {
			t.Fatal(err)
		}
		if _, err := enqueue(t, st, "d", "123456", lim); err != nil {
			t.Fatalf("after the ACK of 6 bytes there is room for 6: %v", err)
		}
	})
}

// A repeated idempotency key stores nothing and answers the first seq, per
// device, within a batch too, until the key's window ends.
func TestIdempotencyKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		lim := store.Limits{KeyTTL: time.Hour}
		first, err := store.Enqueue(ctx, st, "d", store.Outgoing{Payload: []byte("a"), Key: "k1"}, lim)
		if err != nil || first.Duplicate {
			t.Fatalf("first send: %+v %v", first, err)
		}
		again, err := store.Enqueue(ctx, st, "d", store.Outgoing{Payload: []byte("a"), Key: "k1"}, lim)
		if err != nil || !again.Duplicate || again.Seq != first.Seq {
			t.Fatalf("repeat: %+v %v, want duplicate of %d", again, err, first.Seq)
		}
		if other, _ := store.Enqueue(ctx, st, "e", store.Outgoing{Payload: []byte("a"), Key: "k1"}, lim); other.Duplicate {
			t.Fatal("keys are per device")
		}
		res, err := st.EnqueueBatch(ctx, "d", []store.Outgoing{
			{Payload: []byte("b"), Key: "k2"}, {Payload: []byte("c")}, {Payload: []byte("b"), Key: "k2"}, {Payload: []byte("a"), Key: "k1"},
		}, lim)
		if err != nil || len(res) != 4 {
			t.Fatalf("batch: %+v %v", res, err)
		}
		want := []store.Stored{{Seq: first.Seq + 1}, {Seq: first.Seq + 2}, {Seq: first.Seq + 1, Duplicate: true}, {Seq: first.Seq, Duplicate: true}}
		if fmt.Sprint(res) != fmt.Sprint(want) {
			t.Fatalf("batch answers %v, want %v", res, want)
		}
		if info, _ := st.Device(ctx, "d"); info.Pending != 3 {
			t.Fatalf("pending %d, want 3: duplicates were stored", info.Pending)
		}
		// Keys expire with their window.
		short := store.Limits{KeyTTL: 50 * time.Millisecond}
		k3, _ := store.Enqueue(ctx, st, "d", store.Outgoing{Payload: []byte("x"), Key: "k3"}, short)
		deadline := time.Now().Add(10 * time.Second)
		for {
			r, err := store.Enqueue(ctx, st, "d", store.Outgoing{Payload: []byte("x"), Key: "k3"}, short)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Duplicate {
				if r.Seq <= k3.Seq {
					t.Fatalf("seq %d after expiry, want above %d", r.Seq, k3.Seq)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("key never expired")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// A batch for one device is stored in order, cut at the outbox limit, and
// its holder is told of each stored message.
func TestEnqueueBatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		rec := newRecorder()
		if err := st.Subscribe(ctx, "a", rec); err != nil {
			t.Fatal(err)
		}
		if _, ok := st.(*store.Redis); ok {
			rec.wait(t, func() bool { return rec.resyncs > 0 })
		}
		base := mustEnqueue(t, st, "d", 1)
		hello(t, st, "d", "a", 0)
		var batch []store.Outgoing
		for _, p := range []string{"b1", "b2", "b3", "b4"} {
			batch = append(batch, store.Outgoing{Payload: []byte(p)})
		}
		lim := store.Limits{MaxPending: 4}
		res, err := st.EnqueueBatch(ctx, "d", batch, lim)
		if len(res) != 3 || res[0].Seq != base+2 || res[2].Seq != base+4 || !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("EnqueueBatch with room for 3 = %v, %v; want seqs 2..4, outbox full", res, err)
		}
		msgs, err := st.Pending(ctx, "d", 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%d=%s", m.Seq-base, m.Payload))
		}
		if fmt.Sprint(got) != "[1=m1 2=b1 3=b2 4=b3]" {
			t.Fatalf("outbox %v", got)
		}
		rec.wait(t, func() bool { return len(rec.delivered) == 3 })
		want := fmt.Sprintf("[d/%d/b1 d/%d/b2 d/%d/b3]", base+2, base+3, base+4)
		if fmt.Sprint(rec.delivered) != want {
			t.Fatalf("notifications %v, want %s", rec.delivered, want)
		}
		if res, err := st.EnqueueBatch(ctx, "d", batch, lim); len(res) != 0 || !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("full outbox: %v, %v", res, err)
		}
	})
}

func TestDeviceAndState(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		if _, err := st.Device(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
		if err := st.SetState(ctx, "d", json.RawMessage(`{"till":3}`)); err != nil {
			t.Fatal(err)
		}
		info, err := st.Device(ctx, "d")
		if err != nil || string(info.State) != `{"till":3}` || info.Connected {
			t.Fatalf("device with state only: %+v %v", info, err)
		}
		s := hello(t, st, "d", "a", 0)
		if string(s.State) != `{"till":3}` {
			t.Fatalf("state in session: %s", s.State)
		}
	})
}

func TestWarnings(t *testing.T) {
	w, err := store.NewMemory().Warnings(ctx)
	if err != nil || len(w) != 1 || !strings.Contains(w[0], "embedded") {
		t.Fatalf("memory store warnings %q %v", w, err)
	}
	srv := redistest.Start(t)
	rdb := srv.Client()
	st := store.NewRedis(rdb, "t")
	rdb.ConfigSet(ctx, "appendonly", "no")
	rdb.ConfigSet(ctx, "save", "")
	rdb.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru")
	w, err = st.Warnings(ctx)
	if err != nil || len(w) != 2 || !strings.Contains(strings.Join(w, "\n"), "persistence is off") ||
		!strings.Contains(strings.Join(w, "\n"), "allkeys-lru") {
		t.Fatalf("warnings of a Redis without persistence that evicts: %q %v", w, err)
	}
	rdb.ConfigSet(ctx, "appendonly", "yes")
	rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction")
	if w, err := st.Warnings(ctx); err != nil || len(w) != 0 {
		t.Fatalf("warnings of a durable Redis: %q %v", w, err)
	}
}

// The embedded store's upstream can be read and acknowledged, and is
// bounded: a full upstream refuses a PUBLISH (no PUBACK) instead of
// growing without limit.
func TestMemoryUpstream(t *testing.T) {
	m := store.NewMemory()
	m.UpstreamBytes = 10
	s := hello(t, m, "d", "a", 0)
	for id, p := range []string{"aaaa", "bbbb"} {
		if _, err := m.Publish(ctx, "d", s.Epoch, uint64(id), []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Publish(ctx, "d", s.Epoch, 2, []byte("cccc")); !errors.Is(err, store.ErrUpstreamFull) {
		t.Fatalf("publish into a full upstream: %v", err)
	}
	got := m.ReadUpstream(0, 10)
	if len(got) != 2 || got[0].Seq != 1 || got[0].ID != 0 || string(got[1].Payload) != "bbbb" {
		t.Fatalf("upstream %+v", got)
	}
	if got := m.ReadUpstream(1, 10); len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("upstream after 1: %+v", got)
	}
	m.AckUpstream(1)
	if _, err := m.Publish(ctx, "d", s.Epoch, 2, []byte("cccc")); err != nil {
		t.Fatalf("publish after an ack made room: %v", err)
	}
	if got := m.ReadUpstream(0, 10); len(got) != 2 || got[0].Seq != 2 || got[1].Seq != 3 {
		t.Fatalf("upstream after ack: %+v", got)
	}
}

type recorder struct {
	mu        sync.Mutex
	delivered []string
	taken     []string
	resyncs   int
	ch        chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 100)} }

func (r *recorder) Deliver(d string, seq uint64, p []byte) {
	r.mu.Lock()
	r.delivered = append(r.delivered, fmt.Sprintf("%s/%d/%s", d, seq, p))
	r.mu.Unlock()
	r.ch <- struct{}{}
}
func (r *recorder) TakenOver(d string, e uint64) {
	r.mu.Lock()
	r.taken = append(r.taken, fmt.Sprintf("%s/%d", d, e))
	r.mu.Unlock()
	r.ch <- struct{}{}
}
func (r *recorder) Resync() {
	r.mu.Lock()
	r.resyncs++
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *recorder) wait(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("notification did not arrive: delivered=%v taken=%v", r.delivered, r.taken)
		}
	}
}

func TestNotifications(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		a, b := newRecorder(), newRecorder()
		if err := st.Subscribe(ctx, "a", a); err != nil {
			t.Fatal(err)
		}
		if err := st.Subscribe(ctx, "b", b); err != nil {
			t.Fatal(err)
		}
		if _, ok := st.(*store.Redis); ok {
			a.wait(t, func() bool { return a.resyncs > 0 }) // subscribed
			b.wait(t, func() bool { return b.resyncs > 0 })
		}
		s1 := hello(t, st, "d", "a", 0)
		r, err := enqueue(t, st, "d", "x|y", noLimits)
		if err != nil {
			t.Fatal(err)
		}
		a.wait(t, func() bool { return len(a.delivered) == 1 })
		if a.delivered[0] != fmt.Sprintf("d/%d/x|y", r.Seq) {
			t.Fatalf("delivered %v", a.delivered)
		}
		s2 := hello(t, st, "d", "b", 0)
		a.wait(t, func() bool { return len(a.taken) == 1 })
		if a.taken[0] != fmt.Sprintf("d/%d", s2.Epoch) || s2.Epoch <= s1.Epoch {
			t.Fatalf("takeover notice %v", a.taken)
		}
		_, _ = enqueue(t, st, "d", "z", noLimits)
		b.wait(t, func() bool { return len(b.delivered) == 1 })
		if len(a.delivered) != 1 {
			t.Fatalf("old holder still notified: %v", a.delivered)
		}
	})
}

// After Redis comes back, subscribers are told to resync, because
// notifications sent while the link was down are lost.
func TestRedisResyncAfterRestart(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, DialTimeout: 200 * time.Millisecond, MaxRetries: 0})
	defer rdb.Close()
	st := store.NewRedis(rdb, "t")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := newRecorder()
	if err := st.Subscribe(ctx, "a", r); err != nil {
		t.Fatal(err)
	}
	r.wait(t, func() bool { return r.resyncs == 1 })
	srv.Kill()
	if _, err := enqueue(t, st, "d", "x", noLimits); err == nil {
		t.Fatal("enqueue succeeded with Redis down")
	}
	srv.Restart()
	r.wait(t, func() bool { return r.resyncs >= 2 })
	if _, err := st.Hello(ctx, "d", store.Holder{Server: "a"}, 0); err != nil {
		t.Fatalf("store did not recover: %v", err)
	}
}

func TestServerStats(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st := store.NewRedis(rdb, "t")
	now := time.Now().UnixMilli()
	_ = st.PublishStats(ctx, "pod-a", store.ServerStats{Connections: 7, UpdatedUnixMs: now})
	_ = st.PublishStats(ctx, "pod-b", store.ServerStats{Connections: 5, Draining: true, UpdatedUnixMs: now})
	got, err := store.ReadServerStats(ctx, rdb, "t")
	if err != nil || len(got) != 2 || got["pod-a"].Connections != 7 || !got["pod-b"].Draining {
		t.Fatalf("stats %+v %v", got, err)
	}
}

// Concurrent calls share pipelines; after a restart Redis has forgotten the
// scripts, and every call must still succeed.
func TestPipelinedScriptsAfterRestart(t *testing.T) {
	srv := redistest.Start(t)
	st := store.NewRedis(srv.Client(), "t")
	hellos := func() {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := st.Hello(ctx, fmt.Sprint("d", i), store.Holder{Server: "a"}, 0); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	hellos()
	srv.Kill()
	srv.Restart()
	if err := srv.Ping(); err != nil {
		t.Fatal(err)
	}
	hellos()
	if info, err := st.Device(ctx, "d7"); err != nil || info.SessionEpoch == 0 {
		t.Fatalf("after restart: %+v %v", info, err)
	}
}

// A HELLO against a Redis that is gone certainly did not happen; one
// against a stalled Redis may still be applied.
func TestNotApplied(t *testing.T) {
	srv := redistest.Start(t)
	st := store.NewRedis(srv.Client(), "t")
	srv.Stop()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := st.Hello(short, "d", store.Holder{Server: "a"}, 0)
	cancel()
	if err == nil || store.NotApplied(err) {
		t.Fatalf("HELLO timed out against a stalled Redis: %v, NotApplied %v", err, store.NotApplied(err))
	}
	srv.Continue()
	srv.Kill()
	_, err = st.Hello(ctx, "d", store.Holder{Server: "a"}, 0)
	if err == nil || !store.NotApplied(err) {
		t.Fatalf("HELLO against a Redis that is gone: %v, NotApplied %v", err, store.NotApplied(err))
	}
}

// A message for a device held by a server that subscribed through the same
// store value is handed to it directly, without a PUBLISH; one stored by
// another server's store reaches the holder over pub/sub, payload included.
func TestRedisLocalDelivery(t *testing.T) {
	for _, c := range []struct {
		name    string
		clients func(t *testing.T) (a, b, raw redis.UniversalClient)
	}{
		{"redis", func(t *testing.T) (a, b, raw redis.UniversalClient) {
			srv := redistest.Start(t)
			return srv.Client(), srv.Client(), srv.Client()
		}},
		{"redis-cluster", func(t *testing.T) (a, b, raw redis.UniversalClient) {
			cl := redistest.StartCluster(t)
			return cl.Client(), cl.Client(), cl.Client()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ca, cb, raw := c.clients(t)
			stA, stB := store.NewRedis(ca, "t"), store.NewRedis(cb, "t")
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			// What goes over a's channel, as another subscriber sees it.
			var ps *redis.PubSub
			if cl, ok := raw.(*redis.ClusterClient); ok {
				ps = cl.SSubscribe(ctx, "t:srv:{a}")
			} else {
				ps = raw.Subscribe(ctx, "t:srv:{a}")
			}
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			a, b := newRecorder(), newRecorder()
			if err := stA.Subscribe(ctx, "a", a); err != nil {
				t.Fatal(err)
			}
			if err := stB.Subscribe(ctx, "b", b); err != nil {
				t.Fatal(err)
			}
			a.wait(t, func() bool { return a.resyncs > 0 })
			b.wait(t, func() bool { return b.resyncs > 0 })
			hello(t, stA, "d", "a", 0)
			local, err := enqueue(t, stA, "d", "here", noLimits)
			if err != nil {
				t.Fatal(err)
			}
			remote, err := enqueue(t, stB, "d", "there", noLimits)
			if err != nil {
				t.Fatal(err)
			}
			a.wait(t, func() bool { return len(a.delivered) == 2 })
			want := []string{fmt.Sprintf("d/%d/here", local.Seq), fmt.Sprintf("d/%d/there", remote.Seq)}
			if fmt.Sprint(a.delivered) != fmt.Sprint(want) {
				t.Fatalf("holder got %v, want %v", a.delivered, want)
			}
			// Pub/sub keeps order: had the local message been published, it would come first.
			msg, err := ps.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if w := fmt.Sprintf("D|%d|d|there", remote.Seq); msg.Payload != w {
				t.Fatalf("first message on a's channel %q, want %q (the local one must not be published)", msg.Payload, w)
			}
			if len(b.delivered) != 0 {
				t.Fatalf("a server that does not hold the device was told: %v", b.delivered)
			}
		})
	}
}

// Many devices in one call: each gets what EnqueueBatch would have given
// it (stored in order, duplicates answered, cut at its own limit), and its
// holder is told.
func TestEnqueueMany(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		rec := newRecorder()
		if err := st.Subscribe(ctx, "a", rec); err != nil {
			t.Fatal(err)
		}
		if _, ok := st.(*store.Redis); ok {
			rec.wait(t, func() bool { return rec.resyncs > 0 })
		}
		lim := store.Limits{MaxPending: 2, KeyTTL: time.Minute}
		hello(t, st, "held", "a", 0)
		full := mustEnqueue(t, st, "full", 1)
		first, err := st.EnqueueBatch(ctx, "keyed", []store.Outgoing{{Payload: []byte("k1"), Key: "x"}}, lim)
		if err != nil {
			t.Fatal(err)
		}
		out := func(ps ...string) []store.Outgoing {
			var o []store.Outgoing
			for _, p := range ps {
				k, p, _ := strings.Cut(p, "=")
				o = append(o, store.Outgoing{Key: k, Payload: []byte(p)})
			}
			return o
		}
		res := st.EnqueueMany(ctx, []store.DeviceBatch{
			{Device: "held", Msgs: out("=h1", "=h2")},
			{Device: "full", Msgs: out("=f2", "=f3", "=f4")},
			{Device: "keyed", Msgs: out("x=again", "y=k2")},
		}, lim)
		if len(res) != 3 {
			t.Fatalf("%d answers for 3 devices", len(res))
		}
		if r := res[0]; r.Err != nil || len(r.Stored) != 2 || r.Stored[1].Seq != r.Stored[0].Seq+1 {
			t.Fatalf("held: %+v", r)
		}
		if r := res[1]; !errors.Is(r.Err, store.ErrOutboxFull) || len(r.Stored) != 1 || r.Stored[0].Seq != full+2 {
			t.Fatalf("full (1 of 2 pending): %+v, want one stored at %d, then outbox full", r, full+2)
		}
		if r := res[2]; r.Err != nil || len(r.Stored) != 2 || r.Stored[0] != (store.Stored{Seq: first[0].Seq, Duplicate: true}) ||
			r.Stored[1] != (store.Stored{Seq: first[0].Seq + 1}) {
			t.Fatalf("keyed: %+v, want the first seq %d answered duplicate, then the next", r, first[0].Seq)
		}
		msgs, err := st.Pending(ctx, "keyed", 0, 10)
		if err != nil || len(msgs) != 2 || string(msgs[1].Payload) != "k2" {
			t.Fatalf("keyed outbox %v, %v", msgs, err)
		}
		rec.wait(t, func() bool { return len(rec.delivered) == 2 })
		want := fmt.Sprint([]string{fmt.Sprintf("held/%d/h1", res[0].Stored[0].Seq), fmt.Sprintf("held/%d/h2", res[0].Stored[1].Seq)})
		if fmt.Sprint(rec.delivered) != want {
			t.Fatalf("holder told %v, want %v", rec.delivered, want)
		}
	})
}
