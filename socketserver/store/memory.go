package store

import (
	"context"
	"encoding/json"
	"sync"
)

// UpstreamEntry is one device message appended upstream.
type UpstreamEntry struct {
	Device  string
	ID      uint64
	Payload []byte
}

// Memory is the embedded store of a single server: the same semantics as
// Redis, kept in process, so one command runs the product on a bare machine.
type Memory struct {
	mu       sync.Mutex
	devices  map[string]*memDevice
	subs     map[string]Handler
	upstream []UpstreamEntry
	stats    map[string]ServerStats
}

type memDevice struct {
	epoch, acked, seq, pubID uint64
	hellos                   uint64
	server                   string
	state                    json.RawMessage
	outbox                   [][]byte // seqs acked+1 .. seq
}

// NewMemory returns an empty embedded store.
func NewMemory() *Memory {
	return &Memory{devices: map[string]*memDevice{}, subs: map[string]Handler{}, stats: map[string]ServerStats{}}
}

func (m *Memory) dev(device string) *memDevice {
	d := m.devices[device]
	if d == nil {
		d = &memDevice{}
		m.devices[device] = d
	}
	return d
}

// ack trims the outbox up to seq (capped at the highest assigned seq).
func (d *memDevice) ack(seq uint64) {
	seq = min(seq, d.seq)
	if seq <= d.acked {
		return
	}
	n := seq - d.acked
	clear(d.outbox[:n])
	d.outbox = d.outbox[n:]
	d.acked = seq
}

func (m *Memory) Hello(_ context.Context, device, server string, lastSeq uint64) (Session, error) {
	m.mu.Lock()
	d := m.dev(device)
	d.epoch++
	d.hellos++
	prev := d.server
	d.server = server
	d.ack(lastSeq)
	s := Session{Epoch: d.epoch, Resumed: d.hellos > 1, State: d.state, LastPublishID: d.pubID, AckedSeq: d.acked, PrevServer: prev}
	h := m.subs[prev]
	m.mu.Unlock()
	if h != nil {
		h.TakenOver(device, s.Epoch)
	}
	return s, nil
}

func (m *Memory) Pending(_ context.Context, device string, after uint64, limit int) ([]Message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[device]
	if d == nil || after >= d.seq {
		return nil, nil
	}
	start := max(after, d.acked) - d.acked
	end := min(start+uint64(limit), uint64(len(d.outbox)))
	out := make([]Message, 0, end-start)
	for i := start; i < end; i++ {
		out = append(out, Message{Seq: d.acked + 1 + i, Payload: d.outbox[i]})
	}
	return out, nil
}

func (m *Memory) Enqueue(ctx context.Context, device string, payload []byte, maxPending int) (uint64, error) {
	seq, _, err := m.EnqueueBatch(ctx, device, [][]byte{payload}, maxPending)
	return seq, err
}

func (m *Memory) EnqueueBatch(_ context.Context, device string, payloads [][]byte, maxPending int) (uint64, int, error) {
	m.mu.Lock()
	d := m.dev(device)
	n := len(payloads)
	if maxPending > 0 {
		n = max(0, min(n, maxPending-len(d.outbox)))
	}
	first := d.seq + 1
	stored := make([][]byte, n)
	for i, p := range payloads[:n] {
		stored[i] = append([]byte(nil), p...)
	}
	d.outbox = append(d.outbox, stored...)
	d.seq += uint64(n)
	h := m.subs[d.server]
	m.mu.Unlock()
	if h != nil {
		for i, p := range stored {
			h.Deliver(device, first+uint64(i), p)
		}
	}
	if n < len(payloads) {
		return first, n, ErrOutboxFull
	}
	return first, n, nil
}

func (m *Memory) Ack(_ context.Context, device string, epoch, seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[device]
	if d == nil || d.epoch != epoch {
		return ErrFenced
	}
	d.ack(seq)
	return nil
}

func (m *Memory) Publish(_ context.Context, device string, epoch, id uint64, payload []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[device]
	if d == nil || d.epoch != epoch {
		return false, ErrFenced
	}
	if id <= d.pubID {
		return true, nil
	}
	d.pubID = id
	m.upstream = append(m.upstream, UpstreamEntry{Device: device, ID: id, Payload: append([]byte(nil), payload...)})
	return false, nil
}

func (m *Memory) Release(_ context.Context, device, server string, epoch uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d := m.devices[device]; d != nil && d.epoch == epoch && d.server == server {
		d.server = ""
	}
	return nil
}

func (m *Memory) Epochs(_ context.Context, devices []string) ([]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]uint64, len(devices))
	for i, dv := range devices {
		if d := m.devices[dv]; d != nil {
			out[i] = d.epoch
		}
	}
	return out, nil
}

func (m *Memory) SetState(_ context.Context, device string, state json.RawMessage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dev(device).state = append(json.RawMessage(nil), state...)
	return nil
}

func (m *Memory) Device(_ context.Context, device string) (DeviceInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[device]
	if d == nil {
		return DeviceInfo{}, ErrNotFound
	}
	return DeviceInfo{Device: device, Connected: d.server != "", Server: d.server, SessionEpoch: d.epoch,
		AckedSeq: d.acked, LastSeq: d.seq, Pending: d.seq - d.acked, State: stateOrEmpty(d.state)}, nil
}

func (m *Memory) Subscribe(ctx context.Context, server string, h Handler) error {
	m.mu.Lock()
	m.subs[server] = h
	m.mu.Unlock()
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		if m.subs[server] == h {
			delete(m.subs, server)
		}
		m.mu.Unlock()
	}()
	return nil
}

func (m *Memory) PublishStats(_ context.Context, server string, st ServerStats) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats[server] = st
	return nil
}

// Upstream returns the upstream entries appended after the first n.
func (m *Memory) Upstream(n int) []UpstreamEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n >= len(m.upstream) {
		return nil
	}
	return append([]UpstreamEntry(nil), m.upstream[n:]...)
}

func (m *Memory) Close() error { return nil }

func stateOrEmpty(s json.RawMessage) json.RawMessage {
	if len(s) == 0 {
		return json.RawMessage("{}")
	}
	return s
}
