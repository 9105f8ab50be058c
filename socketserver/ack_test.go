package socketserver_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// ACKs wait for nothing but a flush or a full batch.
func holdAcks(batch int) func(*socketserver.Config) {
	return func(c *socketserver.Config) { c.AckDelay, c.AckBatch = time.Hour, batch }
}

// acked reads a PONG after the device's ACK: the read loop handled it.
func (c *rawConn) acked(seq uint64) {
	c.t.Helper()
	c.ack(seq)
	c.send(protocol.TypePing, []byte("after-ack"))
	c.expect(protocol.TypePong)
}

// The ACKs of many devices reach Redis in one write.
func TestAcksOfManyDevicesWrittenTogether(t *testing.T) {
	r := redistest.Start(t)
	const n = 20
	srv := startServer(t, redisStore(t, r), "pod-a", holdAcks(n))
	seqs := make([]uint64, n)
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = dial(t, srv.Addrs().TCP)
		conns[i].welcome(fmt.Sprint("d", i), 0)
		seqs[i] = send(t, srv, fmt.Sprint("d", i), "x")
		if got, _ := conns[i].deliver(); got != seqs[i] {
			t.Fatalf("d%d: DELIVER %d, want %d", i, got, seqs[i])
		}
	}
	for i, c := range conns {
		if i < n-1 {
			c.acked(seqs[i])
		} else {
			c.ack(seqs[i]) // fills the batch
		}
	}
	for i := range conns {
		eventually(t, "ACK stored", func() bool { return deviceInfo(t, srv, fmt.Sprint("d", i)).AckedSeq == seqs[i] })
	}
	if w, d := metric(t, srv, "socketserver_ack_write_devices_count"), metric(t, srv, "socketserver_ack_write_devices_sum"); w != 1 || d != n {
		t.Fatalf("%v writes of %v devices, want 1 of %d", w, d, n)
	}
	if a := metric(t, srv, "socketserver_acks_total"); a != n {
		t.Fatalf("acks_total %v, want %d", a, n)
	}
}

// A device that acked and left finds its ACK applied on another server,
// even with a last_seq of 0: the server writes a device's ACK before it
// releases the session.
func TestAckWrittenBeforeRelease(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", holdAcks(256))
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	c := dial(t, a.Addrs().TCP)
	c.welcome("d", 0)
	first := send(t, a, "d", "1")
	second := send(t, a, "d", "2")
	c.deliver()
	c.deliver()
	c.acked(first)
	if d := deviceInfo(t, a, "d"); d.AckedSeq != first-1 {
		t.Fatalf("acked %d before the hand-over, want it held (%d)", d.AckedSeq, first-1)
	}
	c.nc.Close()
	eventually(t, "released", func() bool { return !deviceInfo(t, a, "d").Connected })
	if d := deviceInfo(t, b, "d"); d.AckedSeq != first {
		t.Fatalf("acked %d after the release, want %d", d.AckedSeq, first)
	}
	c2 := dial(t, b.Addrs().TCP)
	c2.welcome("d", 0)
	if seq, p := c2.deliver(); seq != second || p != "2" {
		t.Fatalf("after resume: DELIVER %d %q, want %d (the acked %d not again)", seq, p, second, first)
	}
}

// Shutdown writes the ACKs still queued.
func TestShutdownWritesAcks(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func() store.Store) {
		st := newStore()
		srv := startServer(t, st, "pod-a", holdAcks(256))
		c := dial(t, srv.Addrs().TCP)
		c.welcome("d", 0)
		seq := send(t, srv, "d", "1")
		c.deliver()
		c.acked(seq)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if d, err := st.Device(ctx, "d"); err != nil || d.AckedSeq != seq {
			t.Fatalf("after Shutdown: %+v %v, want acked %d", d, err, seq)
		}
	})
}
