// Package store keeps device sessions where every server of a cluster can
// reach them: Redis for a cluster, memory for a single embedded server. Both
// implementations give the same guarantees, and the same tests run on both.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

var (
	// ErrFenced: the session moved to a newer HELLO; the caller's connection is stale.
	ErrFenced = errors.New("session taken over by a newer connection")
	// ErrOutboxFull: the device already has the maximum of unacknowledged messages.
	ErrOutboxFull = errors.New("outbox full")
	// ErrNotFound: the device has no accepted HELLO, message or state.
	ErrNotFound = errors.New("device not found")
	// ErrLost: the store no longer has the session of a live connection
	// (it restarted empty, failed over, or evicted it).
	ErrLost = errors.New("session lost by the store")
)

// Holder names the connection that holds a device: the server and a
// connection id unique on that server. Release and Reclaim act only for the
// holder they name, so a late call cannot undo a newer connection.
type Holder struct {
	Server string
	Conn   uint64
}

// Session is what an accepted HELLO returns.
type Session struct {
	Epoch         uint64
	Resumed       bool
	State         json.RawMessage
	LastPublishID uint64
	// AckedSeq is the cumulative ack after applying the HELLO's last_seq.
	AckedSeq uint64
	// HeadSeq is the last seq stored before this HELLO: of a resumed
	// session, those after AckedSeq may have been sent before.
	HeadSeq uint64
	// PrevServer held the device before this HELLO ("" if none).
	PrevServer string
}

// Message is a stored downstream message.
type Message struct {
	Seq     uint64
	Payload []byte
}

// Outgoing is one downstream message offered to the store.
type Outgoing struct {
	Payload []byte
	// Key makes the send idempotent: a repeat of the key for the same
	// device within Limits.KeyTTL stores nothing and answers the first seq.
	Key string
}

// Limits bound a device's outbox and the memory of idempotency keys.
type Limits struct {
	MaxPending      int           // unacknowledged messages; 0 = unbounded
	MaxPendingBytes int64         // unacknowledged payload bytes; 0 = unbounded
	KeyTTL          time.Duration // how long a Key is remembered
}

// Stored answers one Outgoing.
type Stored struct {
	Seq uint64
	// Duplicate: the key was seen before; nothing was stored and Seq is the
	// seq the first send got.
	Duplicate bool
}

// DeviceInfo answers GET /v1/devices/{device}.
type DeviceInfo struct {
	Device       string          `json:"device"`
	Connected    bool            `json:"connected"`
	Server       string          `json:"server"`
	SessionEpoch uint64          `json:"session_epoch"`
	AckedSeq     uint64          `json:"acked_seq"`
	LastSeq      uint64          `json:"last_seq"`
	Pending      uint64          `json:"pending"`
	State        json.RawMessage `json:"state"`
}

// AuditInfo is what Audit reports about one device.
type AuditInfo struct {
	Epoch    uint64
	AckedSeq uint64
	Pending  uint64
}

// Handler receives what other servers (or this one) send to this server.
// Calls must not block. Deliver may be called by several goroutines at
// once (an enqueue on this server delivers directly), and out of seq order.
type Handler interface {
	// Deliver: a message was stored for a device this server holds.
	Deliver(device string, seq uint64, payload []byte)
	// TakenOver: a HELLO with epoch was accepted for device elsewhere.
	TakenOver(device string, epoch uint64)
	// Resync: notifications may have been lost, or the store may have lost
	// data (link to the store came back); every local session should
	// re-check its epoch and its outbox.
	Resync()
}

// Store is the session store shared by the servers of a cluster.
//
// Seqs and epochs of a device never go backwards, also when the store lost
// the device's keys: a new session or outbox starts from the clock in
// microseconds, above anything issued before (unless one device was sent
// more than a million messages a second).
type Store interface {
	// Hello accepts a HELLO for h: bumps the epoch, takes ownership,
	// applies lastSeq as an ACK and tells the previous holder it lost.
	Hello(ctx context.Context, device string, h Holder, lastSeq uint64) (Session, error)
	// Pending returns up to limit stored messages with seq > after, in order.
	Pending(ctx context.Context, device string, after uint64, limit int) ([]Message, error)
	// EnqueueBatch stores messages for one device in order, as one
	// operation, and notifies the holder. It answers the first n in order
	// (stored, or duplicates of an earlier key); when the outbox fills up
	// first, n is short and err is ErrOutboxFull.
	EnqueueBatch(ctx context.Context, device string, msgs []Outgoing, lim Limits) ([]Stored, error)
	// EnqueueMany is EnqueueBatch for many devices at once (each device
	// at most once): the answer for batches[i] is at [i]. Redis stores
	// them in as few script calls as the keys' slots allow.
	EnqueueMany(ctx context.Context, batches []DeviceBatch, lim Limits) []Enqueued
	// Ack applies a cumulative ACK if epoch is still current. ErrLost: the
	// store no longer knows the session (Reclaim it).
	Ack(ctx context.Context, device string, epoch, seq uint64) error
	// AckMany is Ack for many devices at once (each device at most once):
	// the answer for acks[i] is at [i]. Redis applies them in as few
	// script calls as the keys' slots allow, one round trip per node.
	AckMany(ctx context.Context, acks []DeviceAck) []error
	// Publish appends an upstream message unless id was already recorded;
	// dup reports a retransmit. The epoch must still be current; ErrLost
	// as for Ack.
	Publish(ctx context.Context, device string, epoch, id uint64, payload []byte) (dup bool, err error)
	// Reclaim restores the session of a connection that is still open after
	// the store lost it (epoch, holder, last publish id); ErrFenced when a
	// newer HELLO holds the session.
	Reclaim(ctx context.Context, device string, h Holder, epoch, pubID uint64) error
	// Release gives up ownership if h still holds the device.
	Release(ctx context.Context, device string, h Holder) error
	// Audit returns each device's epoch (0: the store does not know the
	// session), cumulative ACK and number of unacknowledged messages, for
	// the server's periodic check of the sessions it holds.
	Audit(ctx context.Context, devices []string) ([]AuditInfo, error)
	SetState(ctx context.Context, device string, state json.RawMessage) error
	Device(ctx context.Context, device string) (DeviceInfo, error)
	// Subscribe routes notifications for server to h until ctx ends.
	Subscribe(ctx context.Context, server string, h Handler) error
	// PublishStats records this server's stats for the operator.
	PublishStats(ctx context.Context, server string, st ServerStats) error
	// Warnings says how the store could lose acknowledged data (e.g.
	// Redis without persistence, or with an eviction policy that may evict
	// sessions); empty when it found none.
	Warnings(ctx context.Context) ([]string, error)
	Close() error
}

// DeviceBatch is one device's messages in an EnqueueMany.
type DeviceBatch struct {
	Device string
	Msgs   []Outgoing
}

// DeviceAck is one device's cumulative ACK in an AckMany.
type DeviceAck struct {
	Device     string
	Epoch, Seq uint64
}

// Enqueued answers one DeviceBatch as EnqueueBatch would.
type Enqueued struct {
	Stored []Stored
	Err    error
	server string // the holder, as the Redis script found it
}

// Enqueue stores one message: EnqueueBatch for a batch of one.
func Enqueue(ctx context.Context, s Store, device string, m Outgoing, lim Limits) (Stored, error) {
	res, err := s.EnqueueBatch(ctx, device, []Outgoing{m}, lim)
	if len(res) == 1 {
		return res[0], nil
	}
	if err == nil {
		err = ErrOutboxFull
	}
	return Stored{}, err
}
