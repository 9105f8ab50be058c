package store

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps sessions in Redis (single node, Sentinel or Cluster).
//
// Keys of a device carry the hash tag {device} so that a session's hash and
// its outbox list sit in one slot and change together in one script:
//
//	<prefix>:{dev}:s   hash: epoch hellos server acked seq pubid state
//	<prefix>:{dev}:q   list: payloads of seqs acked+1 .. seq
//	<prefix>:upstream  stream of device messages (device, id, payload)
//
// Servers are told about new messages and takeovers on the channel
// <prefix>:srv:{server}. On a single node the scripts publish themselves (one
// round trip per operation); on Cluster the channel lives in another slot, so
// the store publishes with SPUBLISH after the script.
type Redis struct {
	rdb     redis.UniversalClient
	batch   *batcher
	prefix  string
	cluster bool
}

// NewRedis wraps a client. Sessions are written under prefix.
func NewRedis(rdb redis.UniversalClient, prefix string) *Redis {
	_, cluster := rdb.(*redis.ClusterClient)
	return &Redis{rdb: rdb, batch: newBatcher(rdb), prefix: prefix, cluster: cluster}
}

func (r *Redis) sessionKey(d string) string { return r.prefix + ":{" + d + "}:s" }
func (r *Redis) outboxKey(d string) string  { return r.prefix + ":{" + d + "}:q" }
func (r *Redis) upstreamKey() string        { return r.prefix + ":upstream" }
func (r *Redis) channel(server string) string {
	return r.prefix + ":srv:{" + server + "}"
}

// channelPrefix is passed to scripts; "" tells them not to publish.
func (r *Redis) channelPrefix() string {
	if r.cluster {
		return ""
	}
	return r.prefix + ":srv:{"
}

// Notifications are "kind|number|device|payload": devices cannot contain '|'.
const (
	kindDeliver  = "D"
	kindTakeover = "T"
)

// pubid is stored zero-padded so that Lua compares full uint64 ids as strings
// (Lua numbers are doubles and would round ids above 2^53).
func padID(id uint64) string {
	const zeros = "00000000000000000000"
	s := strconv.FormatUint(id, 10)
	return zeros[len(s):] + s
}

var helloScript = redis.NewScript(`
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local hellos = redis.call('HINCRBY', KEYS[1], 'hellos', 1)
local v = redis.call('HMGET', KEYS[1], 'server', 'acked', 'seq', 'pubid', 'state')
local prev = v[1] or ''
local acked = tonumber(v[2] or '0')
local seq = tonumber(v[3] or '0')
local ls = tonumber(ARGV[2])
if ls > seq then ls = seq end
if ls > acked then
  redis.call('LTRIM', KEYS[2], ls - acked, -1)
  acked = ls
  redis.call('HSET', KEYS[1], 'acked', acked)
end
redis.call('HSET', KEYS[1], 'server', ARGV[1])
if prev ~= '' and ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3] .. prev .. '}', 'T|' .. epoch .. '|' .. ARGV[4] .. '|')
end
return {epoch, hellos, prev, acked, v[4] or '0', v[5] or ''}
`)

func (r *Redis) Hello(ctx context.Context, device, server string, lastSeq uint64) (Session, error) {
	res, err := r.batch.run(ctx, helloScript, []string{r.sessionKey(device), r.outboxKey(device)},
		server, strconv.FormatUint(lastSeq, 10), r.channelPrefix(), device).Slice()
	if err != nil {
		return Session{}, err
	}
	s := Session{
		Epoch:      uint64(res[0].(int64)),
		Resumed:    res[1].(int64) > 1,
		PrevServer: res[2].(string),
		AckedSeq:   uint64(res[3].(int64)),
	}
	s.LastPublishID, _ = strconv.ParseUint(res[4].(string), 10, 64)
	if st := res[5].(string); st != "" {
		s.State = json.RawMessage(st)
	}
	if r.cluster && s.PrevServer != "" {
		r.notify(ctx, s.PrevServer, kindTakeover, s.Epoch, device, nil)
	}
	return s, nil
}

func (r *Redis) notify(ctx context.Context, server, kind string, n uint64, device string, payload []byte) {
	msg := make([]byte, 0, 32+len(device)+len(payload))
	msg = append(msg, kind...)
	msg = append(msg, '|')
	msg = strconv.AppendUint(msg, n, 10)
	msg = append(msg, '|')
	msg = append(msg, device...)
	msg = append(msg, '|')
	msg = append(msg, payload...)
	// Best effort: a lost notification is repaired by Resync or the next message.
	r.rdb.SPublish(ctx, r.channel(server), msg)
}

var pendingScript = redis.NewScript(`
local acked = tonumber(redis.call('HGET', KEYS[1], 'acked') or '0')
local a = tonumber(ARGV[1])
local start = 0
if a > acked then start = a - acked end
return {acked + start, redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)}
`)

func (r *Redis) Pending(ctx context.Context, device string, after uint64, limit int) ([]Message, error) {
	res, err := r.batch.run(ctx, pendingScript, []string{r.sessionKey(device), r.outboxKey(device)},
		strconv.FormatUint(after, 10), limit).Slice()
	if err != nil {
		return nil, err
	}
	first := uint64(res[0].(int64)) + 1
	items := res[1].([]any)
	out := make([]Message, len(items))
	for i, it := range items {
		out[i] = Message{Seq: first + uint64(i), Payload: []byte(it.(string))}
	}
	return out, nil
}

// enqueueScript stores ARGV[4..] for one device, as many as the outbox
// limit ARGV[1] lets in, and notifies the holder (ARGV[2]: channel prefix,
// empty on Cluster where the caller notifies; ARGV[3]: device).
var enqueueScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'seq', 'acked', 'server')
local seq = tonumber(v[1] or '0')
local n = #ARGV - 3
local maxp = tonumber(ARGV[1])
if maxp > 0 then n = math.min(n, maxp - (seq - tonumber(v[2] or '0'))) end
if n <= 0 then return {seq + 1, 0, ''} end
redis.call('HINCRBY', KEYS[1], 'seq', n)
redis.call('RPUSH', KEYS[2], unpack(ARGV, 4, 3 + n))
local server = v[3] or ''
if server ~= '' and ARGV[2] ~= '' then
  for i = 1, n do
    redis.call('PUBLISH', ARGV[2] .. server .. '}', 'D|' .. (seq + i) .. '|' .. ARGV[3] .. '|' .. ARGV[3 + i])
  end
end
return {seq + 1, n, server}
`)

func (r *Redis) Enqueue(ctx context.Context, device string, payload []byte, maxPending int) (uint64, error) {
	seq, _, err := r.EnqueueBatch(ctx, device, [][]byte{payload}, maxPending)
	return seq, err
}

func (r *Redis) EnqueueBatch(ctx context.Context, device string, payloads [][]byte, maxPending int) (uint64, int, error) {
	args := make([]any, 0, 3+len(payloads))
	args = append(args, maxPending, r.channelPrefix(), device)
	for _, p := range payloads {
		args = append(args, p)
	}
	res, err := r.batch.run(ctx, enqueueScript, []string{r.sessionKey(device), r.outboxKey(device)}, args...).Slice()
	if err != nil {
		return 0, 0, err
	}
	first, n := uint64(res[0].(int64)), int(res[1].(int64))
	if server := res[2].(string); r.cluster && server != "" {
		for i, p := range payloads[:n] {
			r.notify(ctx, server, kindDeliver, first+uint64(i), device, p)
		}
	}
	if n < len(payloads) {
		return first, n, ErrOutboxFull
	}
	return first, n, nil
}

var ackScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'acked', 'seq')
if v[1] ~= ARGV[1] then return -1 end
local acked = tonumber(v[2] or '0')
local a = tonumber(ARGV[2])
local seq = tonumber(v[3] or '0')
if a > seq then a = seq end
if a > acked then
  redis.call('LTRIM', KEYS[2], a - acked, -1)
  redis.call('HSET', KEYS[1], 'acked', a)
end
return 0
`)

func (r *Redis) Ack(ctx context.Context, device string, epoch, seq uint64) error {
	n, err := r.batch.run(ctx, ackScript, []string{r.sessionKey(device), r.outboxKey(device)},
		strconv.FormatUint(epoch, 10), strconv.FormatUint(seq, 10)).Int64()
	if err != nil {
		return err
	}
	if n < 0 {
		return ErrFenced
	}
	return nil
}

// publishScript checks the epoch and the last id; with an upstream key it
// also appends and records (single node), without it only checks (Cluster).
var publishScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'pubid')
if v[1] ~= ARGV[1] then return -1 end
if v[2] and v[2] >= ARGV[2] then return 0 end
if KEYS[2] then
  redis.call('XADD', KEYS[2], '*', 'device', ARGV[4], 'id', ARGV[3], 'payload', ARGV[5])
  redis.call('HSET', KEYS[1], 'pubid', ARGV[2])
end
return 1
`)

// recordScript raises pubid after the append (Cluster path).
var recordScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'pubid')
if v[1] ~= ARGV[1] then return -1 end
if not v[2] or v[2] < ARGV[2] then redis.call('HSET', KEYS[1], 'pubid', ARGV[2]) end
return 1
`)

func (r *Redis) Publish(ctx context.Context, device string, epoch, id uint64, payload []byte) (bool, error) {
	keys := []string{r.sessionKey(device)}
	if !r.cluster {
		keys = append(keys, r.upstreamKey())
	}
	ep, pid, sid := strconv.FormatUint(epoch, 10), padID(id), strconv.FormatUint(id, 10)
	n, err := r.batch.run(ctx, publishScript, keys, ep, pid, sid, device, payload).Int64()
	if err != nil {
		return false, err
	}
	switch {
	case n < 0:
		return false, ErrFenced
	case n == 0:
		return true, nil
	case !r.cluster:
		return false, nil
	}
	err = r.rdb.XAdd(ctx, &redis.XAddArgs{Stream: r.upstreamKey(),
		Values: []any{"device", device, "id", sid, "payload", payload}}).Err()
	if err != nil {
		return false, err
	}
	n, err = r.batch.run(ctx, recordScript, keys, ep, pid).Int64()
	if err != nil {
		return false, err
	}
	if n < 0 {
		return false, ErrFenced
	}
	return false, nil
}

var releaseScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'server')
if v[1] == ARGV[1] and v[2] == ARGV[2] then redis.call('HSET', KEYS[1], 'server', '') end
return 0
`)

func (r *Redis) Release(ctx context.Context, device, server string, epoch uint64) error {
	return r.batch.run(ctx, releaseScript, []string{r.sessionKey(device)}, strconv.FormatUint(epoch, 10), server).Err()
}

func (r *Redis) Epochs(ctx context.Context, devices []string) ([]uint64, error) {
	cmds := make([]*redis.StringCmd, len(devices))
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, d := range devices {
			cmds[i] = p.HGet(ctx, r.sessionKey(d), "epoch")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]uint64, len(devices))
	for i, c := range cmds {
		out[i], _ = strconv.ParseUint(c.Val(), 10, 64)
	}
	return out, nil
}

func (r *Redis) SetState(ctx context.Context, device string, state json.RawMessage) error {
	return r.rdb.HSet(ctx, r.sessionKey(device), "state", []byte(state)).Err()
}

func (r *Redis) Device(ctx context.Context, device string) (DeviceInfo, error) {
	v, err := r.rdb.HMGet(ctx, r.sessionKey(device), "epoch", "server", "acked", "seq", "state", "hellos").Result()
	if err != nil {
		return DeviceInfo{}, err
	}
	str := func(i int) string { s, _ := v[i].(string); return s }
	num := func(i int) uint64 { n, _ := strconv.ParseUint(str(i), 10, 64); return n }
	if v[0] == nil && v[3] == nil && v[4] == nil {
		return DeviceInfo{}, ErrNotFound
	}
	info := DeviceInfo{Device: device, Server: str(1), SessionEpoch: num(0), AckedSeq: num(2), LastSeq: num(3),
		State: stateOrEmpty(json.RawMessage(str(4)))}
	info.Connected = info.Server != ""
	info.Pending = info.LastSeq - info.AckedSeq
	return info, nil
}

// Subscribe listens on this server's channel. go-redis re-subscribes by
// itself after a lost link; every (re)subscription triggers Resync because
// notifications sent in between are gone.
func (r *Redis) Subscribe(ctx context.Context, server string, h Handler) error {
	var ps *redis.PubSub
	if r.cluster {
		ps = r.rdb.SSubscribe(ctx, r.channel(server))
	} else {
		ps = r.rdb.Subscribe(ctx, r.channel(server))
	}
	go func() {
		defer ps.Close()
		for {
			msg, err := ps.Receive(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				// go-redis reconnects on the next Receive; don't spin while Redis is down.
				select {
				case <-ctx.Done():
					return
				case <-time.After(250 * time.Millisecond):
				}
				continue
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
					h.Resync()
				}
			case *redis.Message:
				dispatch(m.Payload, h)
			}
		}
	}()
	return nil
}

func dispatch(msg string, h Handler) {
	kind, rest, _ := strings.Cut(msg, "|")
	num, rest, _ := strings.Cut(rest, "|")
	device, payload, ok := strings.Cut(rest, "|")
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil {
		return
	}
	switch kind {
	case kindDeliver:
		h.Deliver(device, n, []byte(payload))
	case kindTakeover:
		h.TakenOver(device, n)
	}
}

func (r *Redis) PublishStats(ctx context.Context, server string, st ServerStats) error {
	b, _ := json.Marshal(st)
	return r.rdb.HSet(ctx, ServersKey(r.prefix), server, b).Err()
}

func (r *Redis) Close() error {
	r.batch.close()
	return r.rdb.Close()
}
