// Package adminapi is the backend HTTP API of a socketserver (its admin
// listener) as Go types: the request and response bodies of every call, the
// error codes, the idempotency key rules and a small client. The server
// encodes exactly these types, so a backend written against this package
// speaks the same bytes as the server. It has no Kubernetes imports.
package adminapi

import (
	"encoding/json"
	"math"
	"net/url"
	"strconv"
	"time"
)

// HeaderIdempotencyKey names the request header that makes
// POST /v1/devices/{device}/messages idempotent (a batch item carries the
// same key in its "key" field).
const HeaderIdempotencyKey = "Idempotency-Key"

// MaxKeyLen is the longest idempotency key.
const MaxKeyLen = 128

// KeyRule says what an idempotency key may be (the message of bad_key).
const KeyRule = "an idempotency key is 1-128 printable ASCII characters"

// ValidKey reports whether k is a valid idempotency key: 1 to 128
// printable ASCII characters (0x20 to 0x7e).
func ValidKey(k string) bool {
	if len(k) == 0 || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// MaxBatch is the most messages one POST /v1/messages may carry; the server
// answers 413 too_many at the next one without reading further.
const MaxBatch = 1000

// Error codes: the "error" field of an ErrorBody, or of a BatchResult.
const (
	// CodeUnauthorized (401): no or a wrong bearer token.
	CodeUnauthorized = "unauthorized"
	// CodeBadDevice (400, or a batch item): the device is not 1-128
	// characters of [A-Za-z0-9._:-].
	CodeBadDevice = "bad_device"
	// CodeBadKey (400, or a batch item): the idempotency key breaks KeyRule.
	CodeBadKey = "bad_key"
	// CodeBadBody (400): the body does not decode, or has data after the
	// JSON object. Nothing was stored.
	CodeBadBody = "bad_body"
	// CodeBadState (400): a state that is not a JSON object within the
	// frame limit.
	CodeBadState = "bad_state"
	// CodeBadQuery (400): a query parameter that does not parse.
	CodeBadQuery = "bad_query"
	// CodeTooLarge (413, or a batch item): a payload above max frame bytes
	// minus 9, or a batch body (or one of its values) beyond its bound.
	CodeTooLarge = "too_large"
	// CodeTooMany (413): more than MaxBatch messages in one batch. Nothing
	// was stored.
	CodeTooMany = "too_many"
	// CodeOutboxFull (429, or a batch item): the device has the maximum of
	// unacknowledged messages or bytes. Nothing was stored.
	CodeOutboxFull = "outbox_full"
	// CodeNotAttempted (batch item): an earlier message to the same device
	// in the batch was not stored, so this one was not tried (a retry in
	// order cannot reorder them).
	CodeNotAttempted = "not_attempted"
	// CodeUnavailable (503, or a batch item): the store did not answer in
	// time. The message may have been stored: retry with the same key.
	CodeUnavailable = "unavailable"
	// CodeBusy (503): too many batch requests at once on this server.
	// Nothing was read or stored; retry after Retry-After.
	CodeBusy = "busy"
	// CodeNotFound (404): the device has no accepted HELLO, message or state.
	CodeNotFound = "not_found"
	// CodeUpstreamInRedis (404): the upstream endpoints serve the embedded
	// store only; with Redis, backends read the stream <prefix>:upstream.
	CodeUpstreamInRedis = "upstream_in_redis"
)

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error   string `json:"error"`
	Message string `json:"message,omitempty"`
}

// SendResult answers POST /v1/devices/{device}/messages with 202.
type SendResult struct {
	Seq uint64 `json:"seq"`
	// Duplicate: the idempotency key was seen before for this device;
	// nothing was stored and Seq is the seq the first send got.
	Duplicate bool `json:"duplicate,omitempty"`
}

// BatchMessage is one message of a batch.
type BatchMessage struct {
	Device  string `json:"device"`
	Payload []byte `json:"payload"` // base64 in JSON
	// Key is the message's idempotency key (per device), optional.
	Key string `json:"key,omitempty"`
}

// BatchRequest is the body of POST /v1/messages.
type BatchRequest struct {
	Messages []BatchMessage `json:"messages"`
}

// BatchResult answers one message of a batch: a seq (stored, or a
// duplicate of an earlier key) or an error code.
type BatchResult struct {
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Error     string `json:"error,omitempty"`
	Message   string `json:"message,omitempty"`
}

// Ambiguous reports whether the message may or may not have been stored
// (the store did not answer): resend it with the same key.
func (r BatchResult) Ambiguous() bool { return r.Error == CodeUnavailable }

// BatchResponse is the 200 answer of POST /v1/messages: one result per
// message, in order.
type BatchResponse struct {
	Results []BatchResult `json:"results"`
}

// DeviceInfo answers GET /v1/devices/{device}.
type DeviceInfo struct {
	Device    string `json:"device"`
	Connected bool   `json:"connected"`
	// Server is the server holding the device now, or "".
	Server       string `json:"server"`
	SessionEpoch uint64 `json:"session_epoch"`
	AckedSeq     uint64 `json:"acked_seq"`
	// LastSeq is the highest seq assigned.
	LastSeq uint64 `json:"last_seq"`
	// Pending is LastSeq - AckedSeq.
	Pending uint64          `json:"pending"`
	State   json.RawMessage `json:"state"`
}

// DrainStarted answers POST /drain (202).
type DrainStarted struct {
	Status string `json:"status"` // "draining"
}

// DrainDone answers POST /drain?wait=1 (200) once no connection remains
// or the drain timeout passed (after the delay, with ?delay=).
type DrainDone struct {
	Remaining int `json:"remaining"`
}

// ServerInfo answers GET /v1/server: this server's name (the pod's),
// its open connections, and whether it drains (it is unready then).
type ServerInfo struct {
	Name        string `json:"name"`
	Connections int    `json:"connections"`
	Draining    bool   `json:"draining"`
}

// ShedRequest is the body of POST /shed: send GOAWAY to Count of the
// server's connections (paced like a drain, with the same jittered
// reconnect hints) while the server stays ready, so that their devices
// reconnect through the load balancer, mostly to other pods.
//
// With Target, the server also refuses new devices while it sheds: as long
// as it holds at least Target connections, a HELLO of a device it does not
// hold gets GOAWAY (reason "rebalancing", a jittered hint) instead of a
// WELCOME, so that the devices it sheds, and those a random L4 balancer
// sends it meanwhile, land on the emptier pods. The refusal ends when it
// holds fewer than Target, after RefuseForMs, or at a drain; never later,
// so a pod does not refuse forever when the operator that asked is gone.
type ShedRequest struct {
	Count int `json:"count"`
	// Target is the connections this server should get down to; 0 keeps
	// accepting every HELLO (the behaviour before targets existed).
	Target int `json:"target,omitempty"`
	// RefuseForMs bounds the refusal, 1 to MaxShedRefuse in milliseconds;
	// required with Target.
	RefuseForMs int64 `json:"refuse_for_ms,omitempty"`
	// Rate is GOAWAYs per second for this shed instead of the server's
	// --drain-rate; 0 keeps the drain's pacing.
	Rate float64 `json:"rate,omitempty"`
}

// MaxShedRefuse is the longest a shed may refuse new devices.
const MaxShedRefuse = time.Hour

// ShedRule says what a shed request may be (the message of its bad_body).
const ShedRule = `want {"count":N} with N >= 1, and optionally "target":T >= 1 with "refuse_for_ms" from 1 to 3600000, and "rate" >= 0 GOAWAYs per second`

// Valid reports whether r is a shed request the server takes (ShedRule).
func (r ShedRequest) Valid() bool {
	switch {
	case r.Count < 1 || r.Target < 0 || r.Rate < 0 || math.IsInf(r.Rate, 0) || math.IsNaN(r.Rate):
		return false
	case r.Target == 0:
		return r.RefuseForMs == 0
	}
	return r.RefuseForMs >= 1 && r.RefuseForMs <= MaxShedRefuse.Milliseconds()
}

// ShedStarted answers POST /shed (202): how many connections were picked
// (fewer than asked when the server holds fewer, or some already got a
// GOAWAY) and how many it held when asked.
type ShedStarted struct {
	Shed        int `json:"shed"`
	Connections int `json:"connections"`
}

// UpstreamEntry is one device message of the embedded store's upstream.
type UpstreamEntry struct {
	// Seq is the entry's position in the upstream, from 1.
	Seq     uint64 `json:"seq"`
	Device  string `json:"device"`
	ID      uint64 `json:"id"`      // the PUBLISH id
	Payload []byte `json:"payload"` // base64 in JSON
}

// UpstreamPage answers GET /v1/upstream?after=N&limit=M: the entries with
// a seq above after, in order; Next is the after of the next read (the last
// entry's seq, or after when there is none) and the up_to that
// acknowledges this page.
type UpstreamPage struct {
	Entries []UpstreamEntry `json:"entries"`
	Next    uint64          `json:"next"`
}

// UpstreamAck is the body of POST /v1/upstream/ack: every entry with a seq
// up to UpTo is forgotten (answer 204).
type UpstreamAck struct {
	UpTo uint64 `json:"up_to"`
}

// Upstream read limits of GET /v1/upstream.
const (
	DefaultUpstreamLimit = 100
	MaxUpstreamLimit     = 1000
)

// Paths of the API.
const (
	PathMessages    = "/v1/messages"
	PathUpstream    = "/v1/upstream"
	PathUpstreamAck = "/v1/upstream/ack"
	PathDrain       = "/drain"
	PathShed        = "/shed"
	PathServer      = "/v1/server"
)

// DrainQuery is the path and query of POST /drain: delay is how long the
// server stays up, unready, before its first GOAWAY; wait answers once the
// drain is over.
func DrainQuery(delay time.Duration, wait bool) string {
	return DrainRateQuery(delay, 0, wait)
}

// DrainRateQuery is DrainQuery with a GOAWAY rate per second for this
// drain, in place of the server's --drain-rate; 0 keeps the server's. The
// operator sets it to share a cluster-wide rate among the pods it drains.
func DrainRateQuery(delay time.Duration, rate float64, wait bool) string {
	q := url.Values{}
	if delay > 0 {
		q.Set("delay", delay.String())
	}
	if rate > 0 {
		q.Set("rate", strconv.FormatFloat(rate, 'g', -1, 64))
	}
	if wait {
		q.Set("wait", "1")
	}
	if len(q) == 0 {
		return PathDrain
	}
	return PathDrain + "?" + q.Encode()
}

// DevicePath is the path of GET /v1/devices/{device}.
func DevicePath(device string) string { return "/v1/devices/" + url.PathEscape(device) }

// MessagesPath is the path of POST /v1/devices/{device}/messages.
func MessagesPath(device string) string { return DevicePath(device) + "/messages" }

// StatePath is the path of PUT /v1/devices/{device}/state.
func StatePath(device string) string { return DevicePath(device) + "/state" }

// UpstreamQuery is the path and query of GET /v1/upstream.
func UpstreamQuery(after uint64, limit int) string {
	return PathUpstream + "?after=" + strconv.FormatUint(after, 10) + "&limit=" + strconv.Itoa(limit)
}
