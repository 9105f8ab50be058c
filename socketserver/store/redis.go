package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps sessions in Redis (single node, Sentinel or Cluster).
//
// Keys of a device carry the hash tag {device} so that a session's hash and
// its outbox list sit in one slot and change together in one script:
//
//	<prefix>:{dev}:s   hash: epoch hellos server conn acked seq bytes pubid state
//	<prefix>:{dev}:q   list: payloads of seqs acked+1 .. seq
//	<prefix>:{dev}:k:<key>  string: seq answered for an idempotency key (expires)
//	<prefix>:upstream  stream of device messages (device, id, payload)
//
// Servers are told about new messages and takeovers on the channel
// <prefix>:srv:{server}. On a single node the scripts publish themselves (one
// round trip per operation); on Cluster the channel lives in another slot, so
// the store publishes with SPUBLISH after the script. A message for a device
// held by a server subscribed through this same Redis value (the server that
// took the POST) is handed to it directly: no PUBLISH, no read back.
type Redis struct {
	rdb     redis.UniversalClient
	batch   *batcher
	prefix  string
	cluster bool

	mu   sync.Mutex
	subs map[string]Handler // local subscribers by server name
}

// NewRedis wraps a client. Sessions are written under prefix.
func NewRedis(rdb redis.UniversalClient, prefix string) *Redis {
	_, cluster := rdb.(*redis.ClusterClient)
	return &Redis{rdb: rdb, batch: newBatcher(rdb), prefix: prefix, cluster: cluster, subs: map[string]Handler{}}
}

// local returns the handler of server if it subscribed through r.
func (r *Redis) local(server string) Handler {
	if server == "" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.subs[server]
}

// localNames lists the servers subscribed through r, for the scripts,
// which notify none of them: the caller delivers to them directly.
func (r *Redis) localNames() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.subs) == 1 { // the usual case: one server per process
		for n := range r.subs {
			return n
		}
	}
	return strings.Join(slices.Sorted(maps.Keys(r.subs)), "|")
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

// luaLib is prepended to the scripts. Lua numbers are doubles and print
// with 14 digits: seqs and epochs start from the clock in microseconds (16
// digits), so they are formatted with str before they go into a string.
// redis.call arguments are formatted exactly by Redis itself.
const luaLib = `
local function str(n) return string.format('%.0f', n) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- outbox returns seq and acked; a new outbox starts from the clock, above
-- any seq issued before the store lost the device's keys.
local function outbox(s)
  local v = redis.call('HMGET', s, 'seq', 'acked')
  if v[1] then return tonumber(v[1]), tonumber(v[2] or '0') end
  local b = clock()
  redis.call('HSET', s, 'seq', b, 'acked', b)
  return b, b
end
-- trim drops the first n messages of the outbox and their bytes.
local function trim(s, q, n)
  local p = redis.call('LPOP', q, n)
  if not p then return end
  local b = 0
  for i = 1, #p do b = b + #p[i] end
  if b > 0 then redis.call('HINCRBY', s, 'bytes', -b) end
end
`

func script(src string) *redis.Script { return redis.NewScript(luaLib + src) }

// helloScript: KEYS session, outbox; ARGV server, last_seq, channel
// prefix, device, conn. A last_seq below the outbox's acked seq (for
// instance one from before the store lost the device) acknowledges nothing.
var helloScript = script(`
local seq, acked = outbox(KEYS[1])
if not redis.call('HGET', KEYS[1], 'epoch') then redis.call('HSET', KEYS[1], 'epoch', clock()) end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local hellos = redis.call('HINCRBY', KEYS[1], 'hellos', 1)
local v = redis.call('HMGET', KEYS[1], 'server', 'pubid', 'state')
local prev = v[1] or ''
local ls = tonumber(ARGV[2])
if ls > seq then ls = seq end
if ls > acked then
  trim(KEYS[1], KEYS[2], ls - acked)
  acked = ls
  redis.call('HSET', KEYS[1], 'acked', acked)
end
redis.call('HSET', KEYS[1], 'server', ARGV[1], 'conn', ARGV[5])
if prev ~= '' and ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3] .. prev .. '}', 'T|' .. str(epoch) .. '|' .. ARGV[4] .. '|')
end
return {epoch, hellos, prev, acked, v[2] or '0', v[3] or '', seq}
`)

func (r *Redis) Hello(ctx context.Context, device string, h Holder, lastSeq uint64) (Session, error) {
	res, err := r.batch.run(ctx, helloScript, []string{r.sessionKey(device), r.outboxKey(device)},
		h.Server, strconv.FormatUint(lastSeq, 10), r.channelPrefix(), device, strconv.FormatUint(h.Conn, 10)).Slice()
	if err != nil {
		return Session{}, err
	}
	s := Session{
		Epoch:      uint64(res[0].(int64)),
		Resumed:    res[1].(int64) > 1,
		PrevServer: res[2].(string),
		AckedSeq:   uint64(res[3].(int64)),
		HeadSeq:    uint64(res[6].(int64)),
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

// enqueueScript stores the messages of one or more devices, each as far
// as its outbox limits let them in, and notifies each holder. ARGV: max
// pending, max bytes, key TTL (ms), channel prefix (empty on Cluster, where
// the caller notifies), the local servers ('|'-separated: the caller
// delivers to them), then per device: its name, its number of KEYS, its
// number of messages, and per message its key's index among the device's
// KEYS (0: none) and its payload. A device's KEYS are its session, its
// outbox, then the idempotency keys of its messages that have one. Returns
// per device its holder, the number of messages answered, then seq and
// duplicate flag of each.
var enqueueScript = script(`
local maxp, maxb = tonumber(ARGV[1]), tonumber(ARGV[2])
local locals = '|' .. ARGV[5] .. '|'
local res, ki, ai = {}, 0, 6
while ai <= #ARGV do
  local device, nk, nm = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  ai = ai + 3
  local s, q = KEYS[ki + 1], KEYS[ki + 2]
  -- One HMGET for the usual case: each command inside counts.
  local v = redis.call('HMGET', s, 'seq', 'acked', 'bytes', 'server')
  local seq, acked
  if v[1] then seq, acked = tonumber(v[1]), tonumber(v[2] or '0') else seq, acked = outbox(s) end
  local bytes = math.max(tonumber(v[3] or '0'), 0)
  local server = v[4] or ''
  local notify = server ~= '' and ARGV[4] ~= '' and string.find(locals, '|' .. server .. '|', 1, true) == nil
  res[#res + 1] = server
  local n = #res + 1
  res[n] = 0
  local new, full = {}, false
  for j = 1, nm do
    local k, p = tonumber(ARGV[ai]), ARGV[ai + 1]
    ai = ai + 2
    local dup = not full and k > 0 and redis.call('GET', KEYS[ki + k])
    if full then
    elseif dup then
      res[#res + 1] = tonumber(dup)
      res[#res + 1] = 1
      res[n] = res[n] + 1
    elseif (maxp > 0 and seq - acked >= maxp) or (maxb > 0 and bytes + #p > maxb) then
      full = true
    else
      seq = seq + 1
      bytes = bytes + #p
      new[#new + 1] = p
      if k > 0 then redis.call('SET', KEYS[ki + k], seq, 'PX', ARGV[3]) end
      if notify then
        redis.call('PUBLISH', ARGV[4] .. server .. '}', 'D|' .. str(seq) .. '|' .. device .. '|' .. p)
      end
      res[#res + 1] = seq
      res[#res + 1] = 0
      res[n] = res[n] + 1
    end
  end
  if #new > 0 then
    redis.call('RPUSH', q, unpack(new))
    redis.call('HSET', s, 'seq', seq, 'bytes', bytes)
  end
  ki = ki + nk
end
return res
`)

// enqueueChunk bounds the devices of one script call: a script holds
// Redis for its whole run.
const enqueueChunk = 100

func (r *Redis) keyKey(device, key string) string { return r.prefix + ":{" + device + "}:k:" + key }

func (r *Redis) EnqueueBatch(ctx context.Context, device string, msgs []Outgoing, lim Limits) ([]Stored, error) {
	res := r.EnqueueMany(ctx, []DeviceBatch{{Device: device, Msgs: msgs}}, lim)[0]
	return res.Stored, res.Err
}

// EnqueueMany implements Store. On a single node a script call stores up to
// enqueueChunk devices; on Cluster a script's keys must share a slot, so
// each device gets its own call. The calls go out together, pipelined.
func (r *Redis) EnqueueMany(ctx context.Context, batches []DeviceBatch, lim Limits) []Enqueued {
	chunk := enqueueChunk
	if r.cluster {
		chunk = 1
	}
	locals := r.localNames()
	var reqs []*scriptReq
	for i := 0; i < len(batches); i += chunk {
		part := batches[i:min(i+chunk, len(batches))]
		keys := make([]string, 0, 3*len(part))
		args := make([]any, 0, 5+5*len(part))
		args = append(args, lim.MaxPending, lim.MaxPendingBytes, lim.KeyTTL.Milliseconds(), r.channelPrefix(), locals)
		for _, b := range part {
			first := len(keys)
			keys = append(keys, r.sessionKey(b.Device), r.outboxKey(b.Device))
			args = append(args, b.Device, 0, len(b.Msgs))
			nk := len(args) - 2
			for _, m := range b.Msgs {
				k := 0
				if m.Key != "" && lim.KeyTTL > 0 {
					keys = append(keys, r.keyKey(b.Device, m.Key))
					k = len(keys) - first
				}
				args = append(args, k, m.Payload)
			}
			args[nk] = len(keys) - first
		}
		reqs = append(reqs, r.batch.start(ctx, enqueueScript, keys, args...))
	}
	out := make([]Enqueued, len(batches))
	for c, req := range reqs {
		part := out[c*chunk : min((c+1)*chunk, len(out))]
		res, err := req.wait(ctx).Slice()
		if err == nil && !r.parseEnqueued(res, part) {
			err = fmt.Errorf("enqueue script answered %d values for %d devices", len(res), len(part))
		}
		if err != nil {
			for i := range part {
				part[i] = Enqueued{Err: err}
			}
		}
	}
	for i, b := range batches {
		r.enqueued(ctx, b, &out[i])
	}
	return out
}

// parseEnqueued reads the script's answer into part; false if malformed.
func (r *Redis) parseEnqueued(res []any, part []Enqueued) bool {
	j := 0
	for i := range part {
		if j+2 > len(res) {
			return false
		}
		server, _ := res[j].(string)
		n, _ := res[j+1].(int64)
		j += 2
		if j+2*int(n) > len(res) {
			return false
		}
		st := make([]Stored, n)
		for k := range st {
			seq, _ := res[j].(int64)
			dup, _ := res[j+1].(int64)
			st[k] = Stored{Seq: uint64(seq), Duplicate: dup == 1}
			j += 2
		}
		part[i] = Enqueued{Stored: st, server: server}
	}
	return j == len(res)
}

// enqueued notifies the holder of b's stored messages (directly when it
// is local, else on Cluster by SPUBLISH) and sets ErrOutboxFull if the
// batch was cut short.
func (r *Redis) enqueued(ctx context.Context, b DeviceBatch, e *Enqueued) {
	if e.Err != nil {
		return
	}
	if h := r.local(e.server); h != nil {
		for i, st := range e.Stored {
			if !st.Duplicate {
				h.Deliver(b.Device, st.Seq, b.Msgs[i].Payload)
			}
		}
	} else if r.cluster && e.server != "" {
		for i, st := range e.Stored {
			if !st.Duplicate {
				r.notify(ctx, e.server, kindDeliver, st.Seq, b.Device, b.Msgs[i].Payload)
			}
		}
	}
	if len(e.Stored) < len(b.Msgs) {
		e.Err = ErrOutboxFull
	}
}

// NotApplied reports whether a failed operation certainly did not reach the
// store: no connection could be had. Any other error (a timeout above all)
// leaves the outcome unknown.
func NotApplied(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial" ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout)
}

// Scripts that need a current epoch return -1 when a newer HELLO holds the
// session and -2 when the store lost it: no epoch, or an older one than the
// caller's (a failover lost the write of its HELLO).
func epochErr(n int64) error {
	switch n {
	case -1:
		return ErrFenced
	case -2:
		return ErrLost
	}
	return nil
}

// ackScript applies the cumulative ACKs of one or more devices. KEYS per
// device: its session, its outbox; ARGV per device: epoch, seq. Returns
// per device 0, or -1 / -2 as epochErr reads them.
var ackScript = script(`
local res = {}
for i = 1, #KEYS / 2 do
  local s, q, e = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i - 1]
  local v = redis.call('HMGET', s, 'epoch', 'acked', 'seq', 'bytes')
  if not v[1] or tonumber(v[1]) < tonumber(e) then
    res[i] = -2
  elseif v[1] ~= e then
    res[i] = -1
  else
    local acked = tonumber(v[2] or '0')
    local a = tonumber(ARGV[2 * i])
    local seq = tonumber(v[3] or '0')
    if a > seq then a = seq end
    if a > acked then
      -- trim's work, with the bytes written in the same HSET: under
      -- uniform traffic the commands inside the scripts are Redis's cost.
      local p = redis.call('LPOP', q, a - acked)
      local b = tonumber(v[4] or '0')
      if p then
        for j = 1, #p do b = b - #p[j] end
      end
      redis.call('HSET', s, 'acked', a, 'bytes', math.max(b, 0))
    end
    res[i] = 0
  end
end
return res
`)

// ackChunk bounds the devices of one ACK script call, as enqueueChunk does.
const ackChunk = 256

func (r *Redis) Ack(ctx context.Context, device string, epoch, seq uint64) error {
	return r.AckMany(ctx, []DeviceAck{{Device: device, Epoch: epoch, Seq: seq}})[0]
}

// AckMany implements Store. On a single node a script call applies up to
// ackChunk devices; on Cluster each device gets its own call (a script's
// keys share a slot) and the pipeline goes to each node in one round trip.
func (r *Redis) AckMany(ctx context.Context, acks []DeviceAck) []error {
	chunk := ackChunk
	if r.cluster {
		chunk = 1
	}
	var reqs []*scriptReq
	for i := 0; i < len(acks); i += chunk {
		part := acks[i:min(i+chunk, len(acks))]
		keys := make([]string, 0, 2*len(part))
		args := make([]any, 0, 2*len(part))
		for _, a := range part {
			keys = append(keys, r.sessionKey(a.Device), r.outboxKey(a.Device))
			args = append(args, strconv.FormatUint(a.Epoch, 10), strconv.FormatUint(a.Seq, 10))
		}
		reqs = append(reqs, r.batch.start(ctx, ackScript, keys, args...))
	}
	errs := make([]error, len(acks))
	for c, req := range reqs {
		part := errs[c*chunk : min((c+1)*chunk, len(errs))]
		res, err := req.wait(ctx).Int64Slice()
		if err == nil && len(res) != len(part) {
			err = fmt.Errorf("ack script answered %d values for %d devices", len(res), len(part))
		}
		for i := range part {
			if err != nil {
				part[i] = err
			} else {
				part[i] = epochErr(res[i])
			}
		}
	}
	return errs
}

// publishScript checks the epoch and the last id; with an upstream key it
// also appends and records (single node), without it only checks (Cluster).
var publishScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'pubid')
if not v[1] or tonumber(v[1]) < tonumber(ARGV[1]) then return -2 end
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
if not v[1] or tonumber(v[1]) < tonumber(ARGV[1]) then return -2 end
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
		return false, epochErr(n)
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
	return false, epochErr(min(n, 0))
}

// reclaimScript: KEYS session; ARGV epoch, server, conn, padded pubid ("" if none).
var reclaimScript = script(`
local v = redis.call('HMGET', KEYS[1], 'epoch', 'hellos', 'pubid')
if v[1] and tonumber(v[1]) > tonumber(ARGV[1]) then return -1 end
if v[1] ~= ARGV[1] then
  outbox(KEYS[1])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
  if not v[2] then redis.call('HSET', KEYS[1], 'hellos', 1) end
  if not v[3] and ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'pubid', ARGV[4]) end
end
redis.call('HSET', KEYS[1], 'server', ARGV[2], 'conn', ARGV[3])
return 0
`)

func (r *Redis) Reclaim(ctx context.Context, device string, h Holder, epoch, pubID uint64) error {
	pid := ""
	if pubID > 0 {
		pid = padID(pubID)
	}
	n, err := r.batch.run(ctx, reclaimScript, []string{r.sessionKey(device)},
		strconv.FormatUint(epoch, 10), h.Server, strconv.FormatUint(h.Conn, 10), pid).Int64()
	if err != nil {
		return err
	}
	return epochErr(n)
}

var releaseScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'server', 'conn')
if v[1] == ARGV[1] and v[2] == ARGV[2] then redis.call('HSET', KEYS[1], 'server', '') end
return 0
`)

func (r *Redis) Release(ctx context.Context, device string, h Holder) error {
	return r.batch.run(ctx, releaseScript, []string{r.sessionKey(device)}, h.Server, strconv.FormatUint(h.Conn, 10)).Err()
}

func (r *Redis) Audit(ctx context.Context, devices []string) ([]AuditInfo, error) {
	cmds := make([]*redis.SliceCmd, len(devices))
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, d := range devices {
			cmds[i] = p.HMGet(ctx, r.sessionKey(d), "epoch", "acked", "seq")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]AuditInfo, len(devices))
	for i, c := range cmds {
		v := c.Val()
		num := func(j int) uint64 { s, _ := v[j].(string); n, _ := strconv.ParseUint(s, 10, 64); return n }
		acked, seq := num(1), num(2)
		out[i] = AuditInfo{Epoch: num(0), AckedSeq: acked, Pending: seq - min(acked, seq)}
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
	r.mu.Lock()
	r.subs[server] = h
	r.mu.Unlock()
	var ps *redis.PubSub
	if r.cluster {
		ps = r.rdb.SSubscribe(ctx, r.channel(server))
	} else {
		ps = r.rdb.Subscribe(ctx, r.channel(server))
	}
	go func() {
		defer ps.Close()
		defer func() {
			r.mu.Lock()
			if r.subs[server] == h {
				delete(r.subs, server)
			}
			r.mu.Unlock()
		}()
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

// Warnings implements Store from the configuration of every Redis master.
func (r *Redis) Warnings(ctx context.Context) ([]string, error) {
	var (
		mu  sync.Mutex
		out []string
	)
	check := func(ctx context.Context, c *redis.Client) error {
		w, err := configWarnings(ctx, c)
		mu.Lock()
		out = append(out, w...)
		mu.Unlock()
		return err
	}
	var err error
	switch c := r.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, check)
	case *redis.Client:
		err = check(ctx, c)
	}
	slices.Sort(out)
	return slices.Compact(out), err
}

func configWarnings(ctx context.Context, c *redis.Client) ([]string, error) {
	cfg, err := c.ConfigGet(ctx, "*").Result()
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		// Managed Redis often renames CONFIG: say so rather than guess.
		return []string{fmt.Sprintf("cannot read the Redis configuration (%v): durability unknown", err)}, nil
	}
	var out []string
	if cfg["appendonly"] == "no" {
		if strings.TrimSpace(cfg["save"]) == "" {
			out = append(out, "Redis persistence is off (appendonly no, no save points): a Redis restart loses every session and unacknowledged message")
		} else {
			out = append(out, "Redis appendonly is off: a Redis restart loses the messages stored since the last snapshot")
		}
	}
	if p := cfg["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
		out = append(out, fmt.Sprintf("Redis maxmemory-policy is %s: under memory pressure Redis may evict sessions and outboxes (use noeviction)", p))
	}
	return out, nil
}

func (r *Redis) Close() error {
	r.batch.close()
	return r.rdb.Close()
}
