package store

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// ErrUpstreamFull: the embedded store's upstream holds its maximum of
// unread bytes; the PUBLISH gets no PUBACK and the device retransmits it.
var ErrUpstreamFull = errors.New("embedded upstream full: read and acknowledge it through the admin API")

// UpstreamEntry is one device message appended upstream.
type UpstreamEntry struct {
	// Seq is the entry's position in the embedded upstream (from 1).
	Seq     uint64 `json:"seq"`
	Device  string `json:"device"`
	ID      uint64 `json:"id"`
	Payload []byte `json:"payload"`
}

// UpstreamReader is implemented by stores that keep the upstream in
// process (the embedded store). With Redis, backends read the stream.
type UpstreamReader interface {
	// ReadUpstream returns up to limit entries with Seq > after.
	ReadUpstream(after uint64, limit int) []UpstreamEntry
	// AckUpstream forgets every entry with Seq <= upTo.
	AckUpstream(upTo uint64)
}

// DefaultUpstreamBytes bounds the embedded upstream's unread payloads.
const DefaultUpstreamBytes = 64 << 20

// Memory is the embedded store of a single server: the same semantics as
// Redis, kept in process, so one command runs the product on a bare machine.
type Memory struct {
	mu      sync.Mutex
	devices map[string]*memDevice
	subs    map[string]Handler
	stats   map[string]ServerStats
	// keys expire in the order they were stored.
	keys []memKey

	upstream      []UpstreamEntry
	upSeq         uint64 // Seq of the last appended entry
	upBytes       int64
	UpstreamBytes int64 // bound of upBytes (DefaultUpstreamBytes)
}

type memDevice struct {
	epoch, acked, seq, pubID uint64
	hasPub                   bool
	hellos                   uint64
	holder                   Holder
	state                    json.RawMessage
	outbox                   [][]byte // seqs acked+1 .. seq
	bytes                    int64    // payload bytes in outbox
	keys                     map[string]keyed
}

type keyed struct {
	seq     uint64
	expires time.Time
}

type memKey struct {
	device, key string
	expires     time.Time
}

// NewMemory returns an empty embedded store.
func NewMemory() *Memory {
	return &Memory{devices: map[string]*memDevice{}, subs: map[string]Handler{}, stats: map[string]ServerStats{},
		UpstreamBytes: DefaultUpstreamBytes}
}

// clockBase is where new sessions start their seqs and epochs: above
// anything issued before a restart that forgot them.
func clockBase() uint64 { return uint64(time.Now().UnixMicro()) }

func (m *Memory) dev(device string) *memDevice {
	d := m.devices[device]
	if d == nil {
		b := clockBase()
		d = &memDevice{acked: b, seq: b}
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
	for _, p := range d.outbox[:n] {
		d.bytes -= int64(len(p))
	}
	clear(d.outbox[:n])
	d.outbox = d.outbox[n:]
	d.acked = seq
}

func (m *Memory) Hello(_ context.Context, device string, h Holder, lastSeq uint64) (Session, error) {
	m.mu.Lock()
	d := m.dev(device)
	if d.epoch == 0 {
		d.epoch = clockBase()
	}
	d.epoch++
	d.hellos++
	prev := d.holder.Server
	d.holder = h
	d.ack(lastSeq)
	s := Session{Epoch: d.epoch, Resumed: d.hellos > 1, State: d.state, LastPublishID: d.pubID, AckedSeq: d.acked, HeadSeq: d.seq, PrevServer: prev}
	sub := m.subs[prev]
	m.mu.Unlock()
	if sub != nil {
		sub.TakenOver(device, s.Epoch)
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

func (m *Memory) EnqueueMany(ctx context.Context, batches []DeviceBatch, lim Limits) []Enqueued {
	out := make([]Enqueued, len(batches))
	for i, b := range batches {
		out[i].Stored, out[i].Err = m.EnqueueBatch(ctx, b.Device, b.Msgs, lim)
	}
	return out
}

func (m *Memory) EnqueueBatch(_ context.Context, device string, msgs []Outgoing, lim Limits) ([]Stored, error) {
	now := time.Now()
	m.mu.Lock()
	m.expireKeys(now)
	d := m.dev(device)
	res := make([]Stored, 0, len(msgs))
	var fresh []Message
	for _, o := range msgs {
		if o.Key != "" {
			if k, ok := d.keys[o.Key]; ok && now.Before(k.expires) {
				res = append(res, Stored{Seq: k.seq, Duplicate: true})
				continue
			}
		}
		if lim.MaxPending > 0 && len(d.outbox) >= lim.MaxPending ||
			lim.MaxPendingBytes > 0 && d.bytes+int64(len(o.Payload)) > lim.MaxPendingBytes {
			break
		}
		p := append([]byte(nil), o.Payload...)
		d.outbox = append(d.outbox, p)
		d.bytes += int64(len(p))
		d.seq++
		fresh = append(fresh, Message{Seq: d.seq, Payload: p})
		res = append(res, Stored{Seq: d.seq})
		if o.Key != "" && lim.KeyTTL > 0 {
			if d.keys == nil {
				d.keys = map[string]keyed{}
			}
			exp := now.Add(lim.KeyTTL)
			d.keys[o.Key] = keyed{seq: d.seq, expires: exp}
			m.keys = append(m.keys, memKey{device: device, key: o.Key, expires: exp})
		}
	}
	h := m.subs[d.holder.Server]
	m.mu.Unlock()
	if h != nil {
		for _, f := range fresh {
			h.Deliver(device, f.Seq, f.Payload)
		}
	}
	if len(res) < len(msgs) {
		return res, ErrOutboxFull
	}
	return res, nil
}

// expireKeys forgets idempotency keys past their window (in the order
// they were stored: the window is one setting, so that is expiry order).
func (m *Memory) expireKeys(now time.Time) {
	n := 0
	for ; n < len(m.keys) && now.After(m.keys[n].expires); n++ {
		k := m.keys[n]
		if d := m.devices[k.device]; d != nil && !now.Before(d.keys[k.key].expires) {
			delete(d.keys, k.key)
		}
	}
	if n > 0 {
		clear(m.keys[:n])
		m.keys = m.keys[n:]
	}
}

// session returns the device if epoch still holds it.
func (m *Memory) session(device string, epoch uint64) (*memDevice, error) {
	d := m.devices[device]
	switch {
	case d == nil || d.epoch < epoch:
		return nil, ErrLost
	case d.epoch != epoch:
		return nil, ErrFenced
	}
	return d, nil
}

func (m *Memory) Ack(_ context.Context, device string, epoch, seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.session(device, epoch)
	if err != nil {
		return err
	}
	d.ack(seq)
	return nil
}

// AckMany implements Store: the same as an Ack per device.
func (m *Memory) AckMany(ctx context.Context, acks []DeviceAck) []error {
	errs := make([]error, len(acks))
	for i, a := range acks {
		errs[i] = m.Ack(ctx, a.Device, a.Epoch, a.Seq)
	}
	return errs
}

func (m *Memory) Publish(_ context.Context, device string, epoch, id uint64, payload []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.session(device, epoch)
	if err != nil {
		return false, err
	}
	if d.hasPub && id <= d.pubID {
		return true, nil
	}
	if m.UpstreamBytes > 0 && m.upBytes+int64(len(payload)) > m.UpstreamBytes {
		return false, ErrUpstreamFull
	}
	d.pubID, d.hasPub = id, true
	m.upSeq++
	m.upBytes += int64(len(payload))
	m.upstream = append(m.upstream, UpstreamEntry{Seq: m.upSeq, Device: device, ID: id, Payload: append([]byte(nil), payload...)})
	return false, nil
}

func (m *Memory) Reclaim(_ context.Context, device string, h Holder, epoch, pubID uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.dev(device)
	if d.epoch > epoch {
		return ErrFenced
	}
	if d.epoch != epoch {
		d.epoch, d.hellos = epoch, max(d.hellos, 1)
		if !d.hasPub && pubID > 0 {
			d.pubID, d.hasPub = pubID, true
		}
	}
	d.holder = h
	return nil
}

func (m *Memory) Release(_ context.Context, device string, h Holder) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d := m.devices[device]; d != nil && d.holder == h {
		d.holder = Holder{}
	}
	return nil
}

func (m *Memory) Audit(_ context.Context, devices []string) ([]AuditInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]AuditInfo, len(devices))
	for i, dv := range devices {
		if d := m.devices[dv]; d != nil {
			out[i] = AuditInfo{Epoch: d.epoch, AckedSeq: d.acked, Pending: d.seq - d.acked}
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
	return DeviceInfo{Device: device, Connected: d.holder.Server != "", Server: d.holder.Server, SessionEpoch: d.epoch,
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

// Warnings implements Store: the embedded store lives in the process.
func (m *Memory) Warnings(context.Context) ([]string, error) {
	return []string{"embedded in-process store: a restart of this server loses every session and unacknowledged message (use --redis-addr)"}, nil
}

// ReadUpstream implements UpstreamReader.
func (m *Memory) ReadUpstream(after uint64, limit int) []UpstreamEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.upstream) == 0 || after >= m.upSeq {
		return nil
	}
	first := m.upstream[0].Seq
	start := uint64(0)
	if after >= first {
		start = after - first + 1
	}
	end := min(start+uint64(max(limit, 0)), uint64(len(m.upstream)))
	return append([]UpstreamEntry(nil), m.upstream[start:end]...)
}

// AckUpstream implements UpstreamReader.
func (m *Memory) AckUpstream(upTo uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for ; n < len(m.upstream) && m.upstream[n].Seq <= upTo; n++ {
		m.upBytes -= int64(len(m.upstream[n].Payload))
	}
	clear(m.upstream[:n])
	m.upstream = m.upstream[n:]
}

func (m *Memory) Close() error { return nil }

func stateOrEmpty(s json.RawMessage) json.RawMessage {
	if len(s) == 0 {
		return json.RawMessage("{}")
	}
	return s
}
