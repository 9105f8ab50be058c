package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

func mustEnqueue(t *testing.T, st store.Store, dev string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := st.Enqueue(ctx, dev, []byte(fmt.Sprintf("m%d", i+1)), 0); err != nil {
			t.Fatal(err)
		}
	}
}

func seqs(ms []store.Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

func TestHelloEpochsAndResume(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		s1, err := st.Hello(ctx, "d", "a", 0)
		if err != nil {
			t.Fatal(err)
		}
		if s1.Epoch != 1 || s1.Resumed || s1.PrevServer != "" || s1.LastPublishID != 0 {
			t.Fatalf("first hello: %+v", s1)
		}
		s2, _ := st.Hello(ctx, "d", "b", 0)
		if s2.Epoch <= s1.Epoch || !s2.Resumed || s2.PrevServer != "a" {
			t.Fatalf("second hello: %+v", s2)
		}
		// A message or state alone does not make the next HELLO a resume.
		mustEnqueue(t, st, "fresh", 1)
		if s, _ := st.Hello(ctx, "fresh", "a", 0); s.Resumed {
			t.Fatalf("first HELLO after a message reports resumed")
		}
	})
}

func TestOutboxAckAndLastSeq(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		mustEnqueue(t, st, "d", 5)
		s, _ := st.Hello(ctx, "d", "a", 2) // last_seq counts as an ACK
		if s.AckedSeq != 2 {
			t.Fatalf("acked after last_seq 2: %d", s.AckedSeq)
		}
		ms, err := st.Pending(ctx, "d", s.AckedSeq, 100)
		if err != nil || fmt.Sprint(seqs(ms)) != "[3 4 5]" || string(ms[0].Payload) != "m3" {
			t.Fatalf("pending after 2: %v %v", seqs(ms), err)
		}
		if ms, _ := st.Pending(ctx, "d", 3, 1); fmt.Sprint(seqs(ms)) != "[4]" {
			t.Fatalf("page after 3: %v", seqs(ms))
		}
		if err := st.Ack(ctx, "d", s.Epoch, 4); err != nil {
			t.Fatal(err)
		}
		// Pending below the ack starts at the ack: acked messages are gone.
		if ms, _ := st.Pending(ctx, "d", 0, 100); fmt.Sprint(seqs(ms)) != "[5]" {
			t.Fatalf("pending after ack 4: %v", seqs(ms))
		}
		// An ACK above the highest seq is taken as the highest seq.
		if err := st.Ack(ctx, "d", s.Epoch, 1000); err != nil {
			t.Fatal(err)
		}
		info, _ := st.Device(ctx, "d")
		if info.AckedSeq != 5 || info.LastSeq != 5 || info.Pending != 0 {
			t.Fatalf("device after over-ack: %+v", info)
		}
		// Seqs are never reused after everything was acked.
		if seq, _ := st.Enqueue(ctx, "d", []byte("x"), 0); seq != 6 {
			t.Fatalf("next seq %d, want 6", seq)
		}
		s2, _ := st.Hello(ctx, "d", "a", 1<<64-1)
		if s2.AckedSeq != 6 {
			t.Fatalf("huge last_seq: acked %d, want 6", s2.AckedSeq)
		}
	})
}

func TestFencing(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		mustEnqueue(t, st, "d", 3)
		old, _ := st.Hello(ctx, "d", "a", 0)
		cur, _ := st.Hello(ctx, "d", "b", 0)
		if err := st.Ack(ctx, "d", old.Epoch, 3); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("ack of old epoch: %v", err)
		}
		if _, err := st.Publish(ctx, "d", old.Epoch, 1, []byte("x")); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("publish of old epoch: %v", err)
		}
		if info, _ := st.Device(ctx, "d"); info.AckedSeq != 0 {
			t.Fatalf("fenced ack applied: %+v", info)
		}
		// The old connection ending must not disown the new one.
		_ = st.Release(ctx, "d", "a", old.Epoch)
		if info, _ := st.Device(ctx, "d"); !info.Connected || info.Server != "b" {
			t.Fatalf("release by stale epoch disowned the session: %+v", info)
		}
		_ = st.Release(ctx, "d", "b", cur.Epoch)
		if info, _ := st.Device(ctx, "d"); info.Connected || info.Server != "" {
			t.Fatalf("release did not disconnect: %+v", info)
		}
		if e, _ := st.Epochs(ctx, []string{"d", "nobody"}); e[0] != cur.Epoch || e[1] != 0 {
			t.Fatalf("epochs: %v", e)
		}
	})
}

func TestPublishDedup(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		s, _ := st.Hello(ctx, "d", "a", 0)
		for _, c := range []struct {
			id  uint64
			dup bool
		}{{5, false}, {5, true}, {3, true}, {1 << 60, false}, {1<<60 - 1, true}, {1<<60 + 1, false}} {
			dup, err := st.Publish(ctx, "d", s.Epoch, c.id, []byte("p"))
			if err != nil || dup != c.dup {
				t.Fatalf("publish id %d: dup=%v err=%v, want dup=%v", c.id, dup, err, c.dup)
			}
		}
		if s2, _ := st.Hello(ctx, "d", "b", 0); s2.LastPublishID != 1<<60+1 {
			t.Fatalf("last_publish_id %d", s2.LastPublishID)
		}
	})
}

func TestOutboxFull(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		for i := 0; i < 3; i++ {
			if _, err := st.Enqueue(ctx, "d", []byte("x"), 3); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.Enqueue(ctx, "d", []byte("x"), 3); !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("4th message with max 3: %v", err)
		}
		s, _ := st.Hello(ctx, "d", "a", 1)
		if _, err := st.Enqueue(ctx, "d", []byte("x"), 3); err != nil {
			t.Fatalf("after an ack there is room: %v (acked %d)", err, s.AckedSeq)
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
		mustEnqueue(t, st, "d", 1)
		if _, err := st.Hello(ctx, "d", "a", 0); err != nil {
			t.Fatal(err)
		}
		batch := [][]byte{[]byte("b1"), []byte("b2"), []byte("b3"), []byte("b4")}
		first, n, err := st.EnqueueBatch(ctx, "d", batch, 4)
		if first != 2 || n != 3 || !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("EnqueueBatch with room for 3 = first %d, n %d, %v; want 2, 3, outbox full", first, n, err)
		}
		msgs, err := st.Pending(ctx, "d", 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%d=%s", m.Seq, m.Payload))
		}
		if fmt.Sprint(got) != "[1=m1 2=b1 3=b2 4=b3]" {
			t.Fatalf("outbox %v", got)
		}
		rec.wait(t, func() bool { return len(rec.delivered) == 3 })
		if fmt.Sprint(rec.delivered) != "[d/2/b1 d/3/b2 d/4/b3]" {
			t.Fatalf("notifications %v", rec.delivered)
		}
		if _, n, err := st.EnqueueBatch(ctx, "d", batch, 4); n != 0 || !errors.Is(err, store.ErrOutboxFull) {
			t.Fatalf("full outbox: n %d, %v", n, err)
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
		s, _ := st.Hello(ctx, "d", "a", 0)
		if string(s.State) != `{"till":3}` {
			t.Fatalf("state in session: %s", s.State)
		}
	})
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
		s1, _ := st.Hello(ctx, "d", "a", 0)
		if _, err := st.Enqueue(ctx, "d", []byte("x|y"), 0); err != nil {
			t.Fatal(err)
		}
		a.wait(t, func() bool { return len(a.delivered) == 1 })
		if a.delivered[0] != "d/1/x|y" {
			t.Fatalf("delivered %v", a.delivered)
		}
		s2, _ := st.Hello(ctx, "d", "b", 0)
		a.wait(t, func() bool { return len(a.taken) == 1 })
		if a.taken[0] != fmt.Sprintf("d/%d", s2.Epoch) || s2.Epoch <= s1.Epoch {
			t.Fatalf("takeover notice %v", a.taken)
		}
		_, _ = st.Enqueue(ctx, "d", []byte("z"), 0)
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
	if _, err := st.Enqueue(ctx, "d", []byte("x"), 0); err == nil {
		t.Fatal("enqueue succeeded with Redis down")
	}
	srv.Restart()
	r.wait(t, func() bool { return r.resyncs >= 2 })
	if _, err := st.Hello(ctx, "d", "a", 0); err != nil {
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
				if _, err := st.Hello(ctx, fmt.Sprint("d", i), "a", 0); err != nil {
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
	if info, err := st.Device(ctx, "d7"); err != nil || info.SessionEpoch != 1 {
		t.Fatalf("after restart: %+v %v", info, err)
	}
}
