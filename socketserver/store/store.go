// Package store keeps device sessions where every server of a cluster can
// reach them: Redis for a cluster, memory for a single embedded server. Both
// implementations give the same guarantees, and the same tests run on both.
package store

import (
	"context"
	"encoding/json"
	"errors"
)

var (
	// ErrFenced: the session moved to a newer HELLO; the caller's connection is stale.
	ErrFenced = errors.New("session taken over by a newer connection")
	// ErrOutboxFull: the device already has the maximum of unacknowledged messages.
	ErrOutboxFull = errors.New("outbox full")
	// ErrNotFound: the device has no accepted HELLO, message or state.
	ErrNotFound = errors.New("device not found")
)

// Session is what an accepted HELLO returns.
type Session struct {
	Epoch         uint64
	Resumed       bool
	State         json.RawMessage
	LastPublishID uint64
	// AckedSeq is the cumulative ack after applying the HELLO's last_seq.
	AckedSeq uint64
	// PrevServer held the device before this HELLO ("" if none).
	PrevServer string
}

// Message is a stored downstream message.
type Message struct {
	Seq     uint64
	Payload []byte
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

// Handler receives what other servers (or this one) send to this server.
// Calls come from one goroutine and must not block.
type Handler interface {
	// Deliver: a message was stored for a device this server holds.
	Deliver(device string, seq uint64, payload []byte)
	// TakenOver: a HELLO with epoch was accepted for device elsewhere.
	TakenOver(device string, epoch uint64)
	// Resync: notifications may have been lost (link to the store came back);
	// every local session should re-check its outbox and its epoch.
	Resync()
}

// Store is the session store shared by the servers of a cluster.
type Store interface {
	// Hello accepts a HELLO on server: bumps the epoch, takes ownership,
	// applies lastSeq as an ACK and tells the previous holder it lost.
	Hello(ctx context.Context, device, server string, lastSeq uint64) (Session, error)
	// Pending returns up to limit stored messages with seq > after, in order.
	Pending(ctx context.Context, device string, after uint64, limit int) ([]Message, error)
	// Enqueue stores a downstream message and notifies the holder of the device.
	Enqueue(ctx context.Context, device string, payload []byte, maxPending int) (uint64, error)
	// EnqueueBatch stores messages for one device in order, as one
	// operation: the first n get seqs first..first+n-1; when the outbox
	// fills up first, n is short and err is ErrOutboxFull.
	EnqueueBatch(ctx context.Context, device string, payloads [][]byte, maxPending int) (first uint64, n int, err error)
	// Ack applies a cumulative ACK if epoch is still current.
	Ack(ctx context.Context, device string, epoch, seq uint64) error
	// Publish appends an upstream message unless id was already recorded;
	// dup reports a retransmit. The epoch must still be current.
	Publish(ctx context.Context, device string, epoch, id uint64, payload []byte) (dup bool, err error)
	// Release gives up ownership when the connection of epoch ends.
	Release(ctx context.Context, device, server string, epoch uint64) error
	// Epochs returns the current epoch of each device (0 if unknown).
	Epochs(ctx context.Context, devices []string) ([]uint64, error)
	SetState(ctx context.Context, device string, state json.RawMessage) error
	Device(ctx context.Context, device string) (DeviceInfo, error)
	// Subscribe routes notifications for server to h until ctx ends.
	Subscribe(ctx context.Context, server string, h Handler) error
	// PublishStats records this server's stats for the operator.
	PublishStats(ctx context.Context, server string, st ServerStats) error
	Close() error
}
